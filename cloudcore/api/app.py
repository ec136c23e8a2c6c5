"""Routes of the cloudcore API and the mapping of errors to JSON responses.

Every error is `{"error": message, "field": name-or-null}` (plus `reason` for auth
errors) with a 4xx status; a bug becomes a 500 with the same shape, never a
traceback in the body. The schema of every route, error model included, is served
at `/openapi.json` and browsable at `/docs`.

Access: with auth off (the default) every route is open. With auth on, `GET`s need
a read-only token, workload and node operations an operator token, and tokens and
node deletion an admin token (`cloudcore.auth.Role`). `POST /api/v1/join` is
authenticated by its join token instead; health, readiness, metrics and the schema
stay open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloudcore.api.selectors import parse_selector
from cloudcore.auth import Auth, AuthError, Principal, Role
from cloudcore.auth.registry import public
from cloudcore.config import ApiSettings
from cloudcore.errors import NotFound
from cloudcore.fleet import Fleet, naming
from cloudcore.fleet.controller import dump_object
from cloudcore.metrics import Metrics
from shared.errors import ObjectError
from shared.models import (
    CLUSTER_KINDS,
    Node,
    expand_lists,
    parse_object,
    without_server_fields,
)
from shared.topics import valid_node_name

log = logging.getLogger("cloudcore.api")

PLURALS = {"nodes": "Node", "pods": "Pod", "daemonsets": "DaemonSet",
           "deployments": "Deployment", "configmaps": "ConfigMap", "secrets": "Secret",
           "namespaces": "Namespace"}
MAX_DOCUMENTS = 1000
MAX_FIELDS = 32
NDJSON = "application/x-ndjson"


# -- documented bodies ---------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="What went wrong, for a human.")
    field: str | None = Field(None, description="The offending field or parameter, if any.")
    reason: str | None = Field(None, description="Machine-readable cause (auth errors), "
                               "e.g. UnknownJoinToken, JoinTokenExpired, Forbidden.")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or expired token."},
    403: {"model": ErrorBody, "description": "The token's role may not do this."},
    404: {"model": ErrorBody, "description": "No such object or resource type."},
    422: {"model": ErrorBody, "description": "Invalid request or object; `field` says where."},
}


class ApplyBody(BaseModel):
    documents: list[Any] = Field(max_length=MAX_DOCUMENTS,
                                 description="Kubernetes-style objects (Pod, DaemonSet, "
                                             "Deployment, ConfigMap, Secret, Namespace, "
                                             "Node), or `kind: List` documents of them. "
                                             "`status` and the server-managed metadata "
                                             "(uid, generation, creationTimestamp, "
                                             "resourceVersion) are accepted and ignored, "
                                             "so what a GET returns can be applied back.")
    dryRun: bool = False


class ListBody(BaseModel):
    items: list[dict[str, Any]]
    continue_: str | None = Field(None, alias="continue",
                                  description="Pass as `continue` for the next page; "
                                              "absent on the last page.")


class JoinRequest(BaseModel):
    token: str = Field(min_length=1, max_length=512, description="Join token `id.secret`.")
    name: str = Field(min_length=1, max_length=253, description="Node name (DNS-1123).")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels the node "
                                   "asks for; the token's labels win on conflict.")
    arch: str | None = Field(None, max_length=32, description="e.g. amd64, arm64.")


class BrokerAddress(BaseModel):
    host: str
    port: int


class Credentials(BaseModel):
    username: str
    password: str = Field(description="Shown once; cloudcore keeps only a hash.")


class JoinResponse(BaseModel):
    node: dict[str, Any]
    broker: BrokerAddress
    credentials: Credentials


class JoinTokenRequest(BaseModel):
    ttlSeconds: float | None = Field(None, gt=0, description="Lifetime; default 24 h.")
    labels: dict[str, str] = Field(default_factory=dict,
                                   description="Labels every node joining with it gets.")
    description: str = Field("", max_length=256)


class ApiTokenRequest(BaseModel):
    role: str = Field(description="admin, operator or read-only.")
    name: str = Field(min_length=1, max_length=128, description="Who or what uses it.")
    ttlSeconds: float | None = Field(None, gt=0, description="Lifetime; default: none.")


class ExecBody(BaseModel):
    command: list[str] = Field(min_length=1, max_length=256,
                               description="argv of the command to run in the container.")
    container: str | None = Field(None, max_length=63, description="Needed when the pod "
                                  "has several containers.")
    timeout: float = Field(30.0, gt=0, le=3600, description="Seconds before the command "
                           "is killed (504).")


REQUEST_STATUS = {"NotFound": 404, "BadRequest": 422, "Conflict": 409, "Busy": 429,
                  "Timeout": 504, "Overflow": 502, "Failed": 502}
ANSWER_TIMEOUT = 10.0  # seconds a node has to send the first chunk of an answer
FOLLOW_IDLE = 45.0  # seconds without a chunk (edges send one every 15 s) ending a follow


class NodeMeta(BaseModel):
    labels: dict[str, str | None] = Field(default_factory=dict,
                                          description="Value null removes the label.")


class NodeSpecPatch(BaseModel):
    unschedulable: bool | None = None


class RolloutAction(BaseModel):
    action: str = Field(description="pause, resume, undo or retry.")


class NodePatch(BaseModel):
    """A merge patch of the node fields an operator may change."""

    metadata: NodeMeta = Field(default_factory=NodeMeta)
    spec: NodeSpecPatch = Field(default_factory=NodeSpecPatch)


def _error(status: int, message: str, field: str | None = None, *,
           reason: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "field": field}
    if reason is not None:
        body["reason"] = reason
    return JSONResponse(body, status_code=status, headers=headers)


def encode_continue(key: Any) -> str:
    raw = json.dumps(list(key) if isinstance(key, tuple) else key, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str, kind: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        key = json.loads(raw)
        if kind in CLUSTER_KINDS and isinstance(key, str):
            return key
        if (kind not in CLUSTER_KINDS and isinstance(key, list) and len(key) == 2
                and all(isinstance(p, str) for p in key)):
            return tuple(key)
    except ValueError:
        pass
    raise ObjectError("continue: not a token from a previous page of this list",
                      field="continue")


def create_app(fleet: Fleet, *, metrics: Metrics,
               flush: Callable[[], Awaitable[None]],
               ready: Callable[[], bool] = lambda: True,
               auth: Auth | None = None,
               settings: ApiSettings | None = None,
               broker: tuple[str, int] = ("127.0.0.1", 1883),
               join_ttl: float = 24 * 3600.0,
               max_join_ttl: float = 365 * 24 * 3600.0,
               requests: Any = None) -> FastAPI:
    """The API over `fleet`. `flush` makes writes durable before a write returns;
    `auth` (default: off) checks bearer tokens; `broker` is what joining nodes are told;
    `requests` (the sync hub's `Requests`) serves pod logs and exec (else 503)."""
    api = settings or ApiSettings()
    access = auth if auth is not None else Auth(store=fleet.store, enabled=False)
    app = FastAPI(title="edgefed cloudcore", version="0.2.0", responses=ERRORS,
                  description="The cloud API of edgefed. Errors are always `ErrorBody`.")

    @app.exception_handler(ObjectError)
    async def _object_error(_: Request, exc: ObjectError) -> JSONResponse:
        return _error(422, exc.message, exc.field)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, exc.field, reason=exc.reason, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "path")) or None
        return _error(422, f"{field}: {err['msg']}" if field else err["msg"], field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, f"internal error: {type(exc).__name__}")

    # -- access ----------------------------------------------------------------------

    def caller(authorization: Annotated[str | None, Header(include_in_schema=False)] = None
               ) -> Principal:
        return access.authenticate(authorization)

    def needs(role: Role, action: str) -> Any:
        def check(who: Principal = Depends(caller)) -> Principal:
            access.require(who, role, action)
            return who
        return Depends(check)

    reader = needs(Role.READ_ONLY, "reading")
    operator = needs(Role.OPERATOR, "changing workloads and nodes")
    admin = needs(Role.ADMIN, "managing tokens and nodes")

    # -- health ----------------------------------------------------------------------

    @app.get("/healthz", summary="Liveness: the process serves HTTP", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the store is open and the broker connected",
             tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz() -> JSONResponse:
        if ready():
            return JSONResponse({"status": "ready"})
        return _error(503, "not ready: store or broker not connected yet")

    @app.get("/metrics", summary="Prometheus metrics (text format 0.0.4)", tags=["health"])
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    # -- identity ---------------------------------------------------------------------

    @app.get("/api/v1/whoami", summary="The caller's name and role", tags=["auth"])
    async def whoami(who: Principal = Depends(caller)) -> dict[str, Any]:
        return {"name": who.name, "role": who.role.label, "authEnabled": access.enabled}

    @app.post("/api/v1/join", summary="Join a node with a join token",
              tags=["nodes"], response_model=JoinResponse,
              description="Validates the join token (401 `unknown or revoked join token` / "
                          "`join token expired`), registers the node with the token's and "
                          "the request's labels, and returns the broker address and new "
                          "per-node broker credentials (the password is shown only here). "
                          "409 if a node of that name has already joined.")
    async def join(body: JoinRequest) -> dict[str, Any]:
        rec = access.check_join_token(body.token)
        if not valid_node_name(body.name):
            raise ObjectError("name: must be a lowercase DNS-1123 name (a-z, 0-9, '-', '.')",
                              field="name")
        access.check_can_join(body.name)
        labels = {**body.labels, **rec.get("labels", {})}
        node = fleet.join_node(body.name, labels=labels, arch=body.arch)
        username, password = access.issue_credentials(body.name)
        access.used_join_token(rec["id"])
        await flush()
        log.info("node %s joined with join token %s", body.name, rec["id"])
        return {"node": dump_object(node), "broker": {"host": broker[0], "port": broker[1]},
                "credentials": {"username": username, "password": password}}

    @app.post("/api/v1/jointokens", summary="Create a join token (admin)", tags=["auth"],
              dependencies=[admin])
    async def create_join_token(body: JoinTokenRequest) -> dict[str, Any]:
        ttl = body.ttlSeconds or join_ttl
        if ttl > max_join_ttl:
            raise ObjectError(f"ttlSeconds: at most {max_join_ttl:g}", field="ttlSeconds")
        token, rec = access.create_join_token(ttl=ttl, labels=body.labels,
                                              description=body.description)
        await flush()
        return {"token": token, **public(rec)}

    @app.get("/api/v1/jointokens", summary="List join tokens, without secrets (admin)",
             tags=["auth"], dependencies=[admin])
    async def list_join_tokens() -> dict[str, Any]:
        return {"items": [public(r) for _, r in sorted(access.join_tokens.items())]}

    @app.delete("/api/v1/jointokens/{token_id}", summary="Revoke a join token (admin)",
                tags=["auth"], dependencies=[admin])
    async def revoke_join_token(token_id: str) -> dict[str, Any]:
        rec = access.revoke_join_token(token_id.split(".", 1)[0])
        await flush()
        return {"deleted": public(rec)}

    @app.post("/api/v1/apitokens", summary="Create an API token with a role (admin)",
              tags=["auth"], dependencies=[admin])
    async def create_api_token(body: ApiTokenRequest) -> dict[str, Any]:
        try:
            role = Role.parse(body.role)
        except ValueError as exc:
            raise ObjectError(f"role: {exc}", field="role") from None
        token, rec = access.create_api_token(role=role, name=body.name, ttl=body.ttlSeconds)
        await flush()
        return {"token": token, **public(rec)}

    @app.get("/api/v1/apitokens", summary="List API tokens, without secrets (admin)",
             tags=["auth"], dependencies=[admin])
    async def list_api_tokens() -> dict[str, Any]:
        return {"items": [public(r) for _, r in sorted(access.api_tokens.items())]}

    @app.delete("/api/v1/apitokens/{token_id}", summary="Revoke an API token (admin)",
                tags=["auth"], dependencies=[admin])
    async def revoke_api_token(token_id: str) -> dict[str, Any]:
        rec = access.revoke_api_token(token_id.split(".", 1)[0])
        await flush()
        return {"deleted": public(rec)}

    # -- workloads ---------------------------------------------------------------------

    @app.post("/api/v1/apply", summary="Create or update objects (all or nothing)",
              tags=["objects"], dependencies=[operator])
    async def apply(body: ApplyBody) -> dict[str, Any]:
        objs = []
        for i, doc in enumerate(body.documents):
            items = expand_lists(doc)
            for j, item in enumerate(items):
                where = f"documents[{i}]" + (f".items[{j}]" if items != [doc] else "")
                try:
                    objs.append(_owned_labels(parse_object(without_server_fields(item))))
                except ObjectError as exc:
                    raise type(exc)(f"{where}: {exc.message}", field=exc.field) from None
        if len(objs) > MAX_DOCUMENTS:
            raise ObjectError(f"documents: at most {MAX_DOCUMENTS} objects",
                              field="documents")
        if body.dryRun:
            results = fleet.plan(objs)
        else:
            results = fleet.apply(objs)
            await flush()
        return {"results": [r.dump() for r in results], "dryRun": body.dryRun}

    def _owned_labels(obj: Any) -> Any:
        """A Node as `get` prints it carries the labels its agent reports too; those stay
        agent-owned, so restating one with its current value is not a change."""
        live = fleet.nodes.get(obj.metadata.name) if isinstance(obj, Node) else None
        if live is not None:
            applied = json.loads(live.metadata.annotations.get(naming.APPLIED_LABELS) or "{}")
            obj.metadata.labels = {k: v for k, v in obj.metadata.labels.items()
                                   if k in applied or live.metadata.labels.get(k) != v}
        return obj

    def _kind(plural: str) -> str:
        kind = PLURALS.get(plural)
        if kind is None:
            raise NotFound("resource type", plural)
        return kind

    def _namespaced(plural: str) -> str:
        kind = _kind(plural)
        if kind in CLUSTER_KINDS:
            raise NotFound("namespaced resource type", plural)
        return kind

    # -- events and watches (before the /{plural} catch-all) ------------------------------

    @app.get("/api/v1/events", summary="Recent fleet events, oldest first", tags=["events"],
             dependencies=[reader],
             description="Scheduling decisions, pods that cannot be placed or fail, node "
                         "Ready/NotReady changes, joins, cordons and drains, from a bounded "
                         "in-memory ring. `object` is `name`, `kind/name` or "
                         "`kind/namespace/name`.")
    async def events(object: str | None = None,
                     limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
                     type: Annotated[str | None, Query(pattern="^(Normal|Warning)$")] = None
                     ) -> dict[str, Any]:
        return {"items": fleet.events.list(obj=object, limit=limit, type=type)}

    @app.get("/api/v1/watch/{plural}", summary="Stream changes as JSON lines",
             tags=["objects"], dependencies=[reader],
             responses={200: {"content": {NDJSON: {}},
                              "description": "One JSON object per line: "
                              '`{"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}}`, '
                              'and `{"type": "BOOKMARK"}` heartbeats; the first BOOKMARK '
                              'after the initial ADDED events has `"initialEventsEnd": '
                              "true`."}},
             description="Changes coalesce: an object that changed several times while "
                         "the client was slow is sent once, in its latest state. An object "
                         "that stops matching the filters is sent as DELETED.")
    async def watch(*, plural: str, namespace: str | None = None,
                    labelSelector: str | None = None, node: str | None = None,
                    name: str | None = None, sendInitialEvents: bool = True,
                    heartbeatSeconds: Annotated[float | None, Query(ge=0.05, le=300)] = None
                    ) -> StreamingResponse:
        kind = _kind(plural)
        selector = parse_selector(labelSelector) if labelSelector else None
        beat = heartbeatSeconds or api.watch_heartbeat

        def want(key: Any, obj: Any) -> bool:
            if name is not None and (key if kind in CLUSTER_KINDS else key[1]) != name:
                return False
            return fleet.matches(kind, key, obj, namespace=namespace, selector=selector,
                                 node=node)

        watcher = fleet.watches.subscribe(kind)

        async def stream() -> AsyncIterator[bytes]:
            sent: set[Any] = set()
            try:
                if sendInitialEvents:
                    chunk: list[bytes] = []
                    table = fleet.table_of(kind)
                    for key in list(fleet.sorted_keys(kind)):
                        obj = table.get(key)
                        if obj is None or not want(key, obj):
                            continue
                        sent.add(key)
                        chunk.append(_line("ADDED", fleet.encoded(kind, key)))
                        if len(chunk) >= 500:
                            yield b"".join(chunk)
                            chunk = []
                    yield b"".join(chunk) + b'{"type":"BOOKMARK","initialEventsEnd":true}\n'
                while not watcher.closed:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(beat):
                            await watcher.wake.wait()
                    if watcher.closed:
                        break
                    dirty = watcher.take()
                    if not dirty:
                        yield b'{"type":"BOOKMARK"}\n'
                        continue
                    out = []
                    for key, tomb in dirty.items():
                        obj = fleet.lookup(kind, key)
                        if obj is not None and want(key, obj):
                            out.append(_line("MODIFIED" if key in sent else "ADDED",
                                             fleet.encoded(kind, key)))
                            sent.add(key)
                        elif key in sent:
                            sent.discard(key)
                            body = tomb if tomb is not None else (
                                dump_object(obj) if obj is not None else None)
                            raw = json.dumps(body, separators=(",", ":")).encode()
                            out.append(_line("DELETED", raw))
                    if out:
                        yield b"".join(out)
            finally:
                fleet.watches.unsubscribe(watcher)

        return StreamingResponse(stream(), media_type=NDJSON,
                                 headers={"Cache-Control": "no-cache"})

    # -- lists and objects ---------------------------------------------------------------

    @app.get("/api/v1/{plural}", summary="List objects of a kind, optionally paged",
             tags=["objects"], dependencies=[reader],
             responses={200: {"model": ListBody,
                              "content": {NDJSON: {}},
                              "description": "`{items, continue}`; with `Accept: "
                              "application/x-ndjson`, one object per line and the continue "
                              "token in the `X-Continue` header."}},
             description="Without `limit` every matching object is returned at once. With "
                         "`limit`, at most that many, in (namespace, name) order, and a "
                         "`continue` token to pass for the next page. `fields` (comma-"
                         "separated dotted paths such as `metadata.name,status.ready`) "
                         "returns only those fields of each object. Secret values are "
                         "`<redacted>` unless `reveal=true` (then `fields` is ignored).")
    async def list_objects(*, request: Request, plural: str, namespace: str | None = None,
                           labelSelector: str | None = None,
                           node: str | None = None,
                           limit: Annotated[int | None, Query(ge=1)] = None,
                           continue_: Annotated[str | None, Query(alias="continue")] = None,
                           fields: str | None = None, reveal: bool = False) -> Response:
        kind = _kind(plural)
        if limit is not None and limit > api.max_page:
            raise ObjectError(f"limit: at most {api.max_page}", field="limit")
        selector = parse_selector(labelSelector) if labelSelector else None
        after = decode_continue(continue_, kind) if continue_ else None
        proj: tuple[str, ...] | None = None
        if fields:
            proj = tuple(sorted({f.strip() for f in fields.split(",") if f.strip()}))
            if len(proj) > MAX_FIELDS:
                raise ObjectError(f"fields: at most {MAX_FIELDS} paths", field="fields")
        keys, more = fleet.page(kind, namespace=namespace, selector=selector, node=node,
                                limit=limit, after=after)
        if reveal and kind == "Secret":
            table = fleet.table_of(kind)
            parts = [json.dumps(dump_object(table[k]), separators=(",", ":")).encode()
                     for k in keys]
        else:
            parts = fleet.encoded_many(kind, keys, proj)
        token = encode_continue(more) if more is not None else None
        headers = {"X-Continue": token} if token else {}
        if NDJSON in request.headers.get("accept", ""):
            body = b"\n".join(parts) + (b"\n" if parts else b"")
            return Response(body, media_type=NDJSON, headers=headers)
        tail = b"]" + (b',"continue":' + json.dumps(token).encode() if token else b"") + b"}"
        return Response(b'{"items":[' + b",".join(parts) + tail,
                        media_type="application/json", headers=headers)

    @app.get("/api/v1/nodes/{name}", summary="Get one node", tags=["nodes"],
             dependencies=[reader])
    async def get_node(name: str) -> dict[str, Any]:
        return fleet.get("Node", None, name)

    @app.patch("/api/v1/nodes/{name}", summary="Label or (un)cordon a node (operator)",
               tags=["nodes"], dependencies=[operator],
               description="Merge patch: `metadata.labels` sets labels (null removes one); "
                           "`spec.unschedulable` cordons (true) or uncordons (false).")
    async def patch_node(name: str, body: NodePatch) -> dict[str, Any]:
        for k in body.metadata.labels:
            if not k or any(c in k for c in " =,!"):
                raise ObjectError(f"metadata.labels: invalid label key {k!r}",
                                  field="metadata.labels")
        node = fleet.patch_node(name, labels=body.metadata.labels,
                                unschedulable=body.spec.unschedulable)
        await flush()
        return node

    @app.post("/api/v1/nodes/{name}/drain", summary="Cordon a node and move its pods away "
              "(operator)", tags=["nodes"], dependencies=[operator],
              description="Deployment pods and unpinned bare pods are rescheduled on other "
                          "nodes; DaemonSet pods and pods pinned by spec.nodeName stay.")
    async def drain(name: str) -> dict[str, Any]:
        result = fleet.drain(name)
        await flush()
        return result

    @app.post("/api/v1/{plural}/{namespace}/{name}/rollout",
              summary="Pause, resume, undo or retry a DaemonSet's or Deployment's rollout "
                      "(operator)",
              tags=["objects"], dependencies=[operator],
              description="`pause`/`resume` set spec.paused (no new batches while paused); "
                          "`undo` sets spec.template back to the template that last rolled "
                          "out everywhere (every pod gets it at once); `retry` starts an "
                          "aborted rollout of the current template again. Returns the "
                          "object. `plural`: daemonsets or deployments.")
    async def rollout(plural: str, namespace: str, name: str,
                      body: RolloutAction) -> dict[str, Any]:
        kind = {"daemonsets": "DaemonSet", "deployments": "Deployment"}.get(plural)
        if kind is None:
            raise NotFound("rollout of kind", plural)
        result = fleet.rollout(kind, namespace, name, body.action)
        await flush()
        return result

    @app.delete("/api/v1/nodes/{name}", summary="Delete a node and its credentials (admin)",
                tags=["nodes"], dependencies=[admin],
                description="Its pods are unbound (DaemonSet pods deleted, the rest "
                            "rescheduled) and its broker credentials removed.")
    async def delete_node(name: str) -> dict[str, Any]:
        deleted = fleet.delete("Node", None, name)
        access.forget_node(name)
        await flush()
        return {"deleted": deleted}

    # -- logs and exec: requests to the pod's node (docs/proposals/0001-requests.md) ------

    def _pod_node(namespace: str, name: str) -> str:
        """The node a pod runs on, or a clear 404/409/503."""
        if requests is None:
            raise _Refused(503, "logs and exec are not available on this server")
        pod = fleet.get("Pod", namespace, name)
        node = (pod.get("status") or {}).get("nodeName") or (pod.get("spec") or {}).get("nodeName")
        if not node:
            raise _Refused(409, f"pod {namespace}/{name} is not scheduled to a node yet")
        obj = fleet.nodes.get(node)
        if obj is not None and obj.status.ready == "NotReady":
            raise _Refused(409, f"node {node} of pod {namespace}/{name} is NotReady")
        return str(node)

    async def _first(stream: Any, node: str) -> Any:
        try:
            msg = await stream.next(ANSWER_TIMEOUT)
        except TimeoutError:
            raise _Refused(504, f"node {node} did not answer within {ANSWER_TIMEOUT:g} s") from None
        _check(msg)
        return msg

    def _check(msg: Any) -> None:
        if msg.error is not None:
            raise _Refused(REQUEST_STATUS.get(msg.code or "", 502), msg.error)

    @app.exception_handler(_Refused)
    async def _refused(_: Request, exc: _Refused) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.get("/api/v1/pods/{namespace}/{name}/log", summary="A container's log (streamed)",
             tags=["pods"], dependencies=[reader],
             responses={200: {"content": {"text/plain": {}}},
                        409: {"model": ErrorBody}, 504: {"model": ErrorBody}},
             description="Asks the pod's node over MQTT. `tail`: last N lines; `since`: "
                         "only the last N seconds; `follow`: keep streaming new output "
                         "until `timeout` seconds or the client disconnects. 409 if the "
                         "node is NotReady, 504 if it does not answer within 10 s.")
    async def pod_log(*, namespace: str, name: str, container: str | None = None,
                      tail: Annotated[int | None, Query(ge=0)] = None,
                      since: Annotated[float | None, Query(gt=0)] = None,
                      follow: bool = False,
                      timeout: Annotated[float, Query(gt=0, le=24 * 3600)] = 3600.0
                      ) -> StreamingResponse:
        node = _pod_node(namespace, name)
        stream = requests.stream(node, kind="logs", pod=f"pod/{namespace}/{name}",
                                 container=container, tail=tail, follow=follow,
                                 since=None if since is None else time.time() - since,
                                 timeout=timeout if follow else 30.0)
        await stream.__aenter__()
        try:
            first = await _first(stream, node)
        except BaseException:
            await stream.__aexit__(None, None, None)
            raise

        async def body() -> AsyncIterator[bytes]:
            msg = first
            try:
                while True:
                    if msg.data:
                        yield msg.data
                    if msg.done:
                        if msg.error:
                            yield f"\nerror: {msg.error}\n".encode()
                        return
                    try:
                        msg = await stream.next(FOLLOW_IDLE if follow else ANSWER_TIMEOUT)
                    except TimeoutError:
                        yield f"\nerror: node {node} stopped answering\n".encode()
                        return
            finally:
                await stream.__aexit__(None, None, None)

        return StreamingResponse(body(), media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/api/v1/pods/{namespace}/{name}/exec", summary="Run a command in a container "
              "(operator)", tags=["pods"], dependencies=[operator],
              responses={409: {"model": ErrorBody}, 504: {"model": ErrorBody}},
              description="Runs `command` in the pod's container on its node and returns "
                          "`{exitCode, stdout, stderr}` (output as UTF-8, invalid bytes "
                          "replaced). 409 if the node is NotReady or the container not "
                          "running, 504 if the node does not answer or the command times out.")
    async def pod_exec(namespace: str, name: str, body: ExecBody) -> dict[str, Any]:
        node = _pod_node(namespace, name)
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        async with requests.stream(node, kind="exec", pod=f"pod/{namespace}/{name}",
                                   container=body.container, argv=body.command,
                                   timeout=body.timeout) as stream:
            msg = await _first(stream, node)
            while True:
                out[msg.stream].append(msg.data)
                if msg.done:
                    break
                try:
                    msg = await stream.next(body.timeout + ANSWER_TIMEOUT)
                except TimeoutError:
                    raise _Refused(504, f"node {node} stopped answering") from None
                _check(msg)
        return {"exitCode": msg.exit_code,
                "stdout": b"".join(out["stdout"]).decode(errors="replace"),
                "stderr": b"".join(out["stderr"]).decode(errors="replace")}

    @app.get("/api/v1/namespaces/{name}", summary="Get one namespace", tags=["objects"],
             dependencies=[reader])
    async def get_namespace(name: str) -> dict[str, Any]:
        return fleet.get("Namespace", None, name)

    @app.delete("/api/v1/namespaces/{name}", summary="Delete a namespace object (operator)",
                tags=["objects"], dependencies=[operator],
                description="Removes the Namespace object only; objects in the namespace "
                            "stay (edgefed does not cascade namespace deletion).")
    async def delete_namespace(name: str) -> dict[str, Any]:
        deleted = fleet.delete("Namespace", None, name)
        await flush()
        return {"deleted": deleted}

    @app.get("/api/v1/{plural}/{namespace}/{name}", summary="Get one namespaced object",
             tags=["objects"], dependencies=[reader])
    async def get_object(plural: str, namespace: str, name: str) -> dict[str, Any]:
        return fleet.get(_namespaced(plural), namespace, name)

    @app.delete("/api/v1/{plural}/{namespace}/{name}",
                summary="Delete a namespaced object and what it owns (operator)",
                tags=["objects"], dependencies=[operator])
    async def delete_object(plural: str, namespace: str, name: str) -> dict[str, Any]:
        deleted = fleet.delete(_namespaced(plural), namespace, name)
        await flush()
        return {"deleted": deleted}

    return app


class _Refused(Exception):
    """A logs/exec call answered with `status` and a JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _line(kind: str, raw: bytes) -> bytes:
    return b'{"type":"' + kind.encode() + b'","object":' + raw + b"}\n"
