"""Routes of the cloudcore API and the mapping of errors to JSON responses.

Every error is `{"error": message, "field": name-or-null}` (plus `reason` for auth
errors) with a 4xx status; a bug becomes a 500 with the same shape, never a
traceback in the body. The schema of every route, error model included, is served
at `/openapi.json` and browsable at `/docs`.

Access (proposal 0002): with auth on (the default) `GET`s need a read-only token;
Secret values (`GET /api/v1/secrets/{ns}/{name}`, `reveal=true`), pod logs, exec, and
workload and node changes an operator token; tokens and node deletion an admin token
(`cloudcore.auth.Role`). `POST /api/v1/join` is authenticated by its join token and
rate-limited per client address; `POST /api/v1/nodes/{name}/certificate` by the node
key. Health, readiness, metrics, the schema, `GET /api/v1/ca` and the console's static
pages (`/`, `/console/`: no data; cloudcore.console) stay open; `/metrics`
holds counts and durations only, no names, labels of objects or secrets. The series
scraped on devices (`/metrics/edge`) name nodes and pods: they need a read-only token. With auth off
(`--insecure`) every route is open to an anonymous admin.

Every request body is capped (`ApiSettings.max_body_bytes`, 3 MiB): a larger
Content-Length, or a streamed body that grows past it, gets 413 before any parsing.
ConfigMap and Secret values are refused at apply when they could not reach a node
(the wire's per-string limit), naming the field and the limit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloudcore.api.brokermap import BrokerTierPort, brokermap_router
from cloudcore.api.listcache import ListCache
from cloudcore.api.selectors import parse_selector
from cloudcore.auth import Auth, AuthError, JoinRefused, JoinTokenUsedUp, Principal, Role
from cloudcore.auth.errors import TooManyJoins
from cloudcore.auth.pki import FleetCA
from cloudcore.auth.ratelimit import RateLimiter
from cloudcore.auth.registry import public
from cloudcore.cluster.errors import ClusterError, KVUnavailable
from cloudcore.cluster.objects import ClusterObjects, NotReplicated, is_global
from cloudcore.config import ApiSettings, AuthSettings
from cloudcore.errors import Conflict, NamespaceNotFound, NotFound, TemporaryError
from cloudcore.fleet import Fleet, naming
from cloudcore.fleet.admission import PolicyRefused, missing_namespaces
from cloudcore.fleet.objects import ApplyResult, dump_object, ident
from cloudcore.metrics import Metrics
from shared import seal
from shared.brokermap import parse_url, url_of
from shared.codec import DOWN_LIMITS, Limits
from shared.entries import secret_entry
from shared.errors import ObjectError
from shared.models import (
    CLUSTER_KINDS,
    ConfigMap,
    Node,
    Secret,
    expand_lists,
    parse_object,
    without_server_fields,
)
from shared.names import reserved_node_name
from shared.problems import problems_of
from shared.topics import valid_node_name

log = logging.getLogger("cloudcore.api")

PLURALS = {"nodes": "Node", "pods": "Pod", "daemonsets": "DaemonSet",
           "deployments": "Deployment", "configmaps": "ConfigMap", "secrets": "Secret",
           "namespaces": "Namespace", "agentupgrades": "AgentUpgrade",
           "priorityclasses": "PriorityClass"}
MAX_DOCUMENTS = 1000
JOINS = "cloudcore_joins_total"
REFUSED = "cloudcore_api_refused_total"
MAX_FIELDS = 32
ENTRY_OVERHEAD = 64 * 1024
"""Bytes of a message to a node kept for what is not an object's values (envelope,
other keys), when the API checks that one object fits."""
NDJSON = "application/x-ndjson"


# -- documented bodies ---------------------------------------------------------------


class FieldError(BaseModel):
    """One violation of an invalid request or object."""

    field: str | None = Field(description="Dotted path of the field in the object (or "
                              "the request), e.g. spec.template.spec.hostPID.")
    message: str = Field(description="Why, and where edgefed supports something close, "
                         "what to write instead.")
    document: str | None = Field(None, description="Which document of an apply, e.g. "
                                 "documents[2] (apply only).")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="What went wrong, for a human (the first violation "
                       "when there are several).")
    field: str | None = Field(None, description="The offending field or parameter, if any.")
    reason: str | None = Field(None, description="Machine-readable cause (auth errors), "
                               "e.g. UnknownJoinToken, JoinTokenExpired, Forbidden.")
    errors: list[FieldError] | None = Field(None, description="422: every violation, "
                                            "not only the first.")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or expired token."},
    403: {"model": ErrorBody, "description": "The token's role may not do this."},
    404: {"model": ErrorBody, "description": "No such object or resource type."},
    413: {"model": ErrorBody, "description": "Request body over the limit (3 MiB)."},
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
    perDocument: bool = Field(False, description="Judge and apply every document on its "
                              "own (kubectl-style): 200 with a result per document, "
                              "applied or refused with its reasons. Without it the call "
                              "is all or nothing.")
    createNamespaces: bool = Field(False, description="Create a namespace an object names "
                                   "that does not exist (without labels), as Helm's "
                                   "--create-namespace; without it such an object is "
                                   "refused with 404 `namespaces \"X\" not found`.")


class ListBody(BaseModel):
    items: list[dict[str, Any]]
    continue_: str | None = Field(None, alias="continue",
                                  description="Pass as `continue` for the next page; "
                                              "absent on the last page.")


class JoinRequest(BaseModel):
    token: str = Field(min_length=1, max_length=512, description="Join token "
                       "`id.secret.pin` as printed (or `id.secret`); the pin part, the hex "
                       "SHA-256 of the fleet CA's DER, must match this cloudcore's CA.")
    name: str = Field(min_length=1, max_length=253, description="Node name (DNS-1123).")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels the node "
                                   "asks for; the token's labels win on conflict.")
    arch: str | None = Field(None, max_length=32, description="e.g. amd64, arm64.")


class BrokerAddress(BaseModel):
    host: str
    port: int
    tls: bool = Field(False, description="Connect with TLS, verifying against caCert.")


class Credentials(BaseModel):
    username: str
    password: str = Field(description="Shown once; cloudcore keeps only a hash.")


class ClientCert(BaseModel):
    cert: str = Field(description="PEM client certificate, CN = the node name.")
    key: str = Field(description="PEM private key (EC P-256); shown once, not kept.")
    notAfter: int = Field(description="Expiry, unix seconds; renew when a third is left.")


class JoinResponse(BaseModel):
    node: dict[str, Any]
    broker: BrokerAddress = Field(description="The node's home broker (what agents from "
                                  "before the broker tier read).")
    brokers: list[str] = Field(default_factory=list, description="The node's brokers, "
                               "home first, then fallbacks: mqtts://host:port "
                               "(proposal 0007).")
    broker_map_version: int = Field(1, description="Version of the partition -> broker "
                                    "map that list comes from; a `broker/-/map` desired "
                                    "entry of a later version replaces it.")
    credentials: Credentials
    key: str = Field(description="base64 of the node's 32-byte key for end-to-end "
                     "message authentication (shared.seal); shown once.")
    caCert: str | None = Field(None, description="PEM of the fleet CA.")
    clientCert: ClientCert | None = Field(None, description="With --node-certs.")
    releaseKeys: list[str] = Field(default_factory=list, description="base64 of the raw "
                                   "32-byte ed25519 public keys agent releases are signed "
                                   "with (proposal 0006); the agent trusts only these.")


class CaInfo(BaseModel):
    caCert: str = Field(description="PEM of the fleet CA.")
    caCertHash: str = Field(description="`sha256:` + hex SHA-256 of the CA's DER.")


class RenewRequest(BaseModel):
    ts: int = Field(description="Unix seconds now (within 5 min of the server's clock, "
                    "and newer than the node's last renewal).")
    mac: str = Field(min_length=64, max_length=64, description="hex HMAC-SHA256(k_up, "
                     "'renew|<name>|<ts>'), k_up derived from the node key.")


class JoinTokenRequest(BaseModel):
    ttlSeconds: float | None = Field(None, gt=0, description="Lifetime; default 24 h.")
    labels: dict[str, str] = Field(default_factory=dict,
                                   description="Labels every node joining with it gets.")
    description: str = Field("", max_length=256)
    uses: int = Field(1, ge=1, le=1_000_000, description="How many nodes it may join.")
    name: str | None = Field(None, min_length=1, max_length=253,
                             description="The one node name it may join (bound token).")


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
           reason: str | None = None, headers: dict[str, str] | None = None,
           errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "field": field}
    if reason is not None:
        body["reason"] = reason
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


class InvalidDocuments(ObjectError):
    """Documents of an all-or-nothing apply that do not validate: the message and field
    of the first (as before), and every violation of every one in `errors`."""

    def __init__(self, refused: list[dict[str, Any]]) -> None:
        first = refused[0]
        super().__init__(f"{first['document']}: {first['error']}", field=first["field"])
        self.errors = [{**e, "document": r["document"]} for r in refused
                       for e in r["errors"]]


def _refused_document(where: str, item: Any, exc: ObjectError) -> dict[str, Any]:
    """The per-document result of a document that does not validate, with every
    problem of it (`shared.problems`), not only the first its schema stopped at."""
    meta = item.get("metadata") if isinstance(item, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    found = problems_of(item) if isinstance(item, dict) else []
    errors = [{"field": p.field, "message": p.reason + (f"; instead: {p.alternative}"
                                                        if p.alternative else "")}
              for p in found] or [{"field": exc.field, "message": exc.message}]
    return {"status": "refused", "kind": item.get("kind") if isinstance(item, dict) else None,
            "namespace": meta.get("namespace"), "name": meta.get("name"), "document": where,
            "code": 422, "error": exc.message, "field": exc.field, "errors": errors}


def violations_of(exc: ObjectError) -> list[dict[str, Any]]:
    """Every violation an ObjectError stands for, as {field, message}."""
    if isinstance(exc, InvalidDocuments):
        return exc.errors
    if isinstance(exc, PolicyRefused):
        return [{"field": v.field, "message": f"{obj}: {v}"} for obj, vs in exc.refused
                for v in vs]
    return [{"field": exc.field, "message": exc.message}]


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
               auth_settings: AuthSettings | None = None,
               broker: tuple[str, int] | tuple[str, int, bool] = ("127.0.0.1", 1883),
               ca: FleetCA | None = None,
               wire: Limits = DOWN_LIMITS,
               requests: Any = None,
               cache: ListCache | None = None,
               release_keys: Sequence[str] = (),
               brokers: BrokerTierPort | None = None,
               cluster: ClusterObjects | None = None) -> FastAPI:
    """The API over `fleet`. `flush` makes writes durable before a write returns;
    `auth` checks bearer tokens (default: an Auth with checks off, for embedding and
    tests; the service always passes its own); `broker` (host, port[, tls]) is what
    joining nodes are told; `ca` the fleet CA (`GET /api/v1/ca`, the join token pin,
    node certificates with `auth_settings.node_certs`); `wire` the cloud-to-edge
    limits objects must fit; `requests` (the sync hub's `Requests`) serves pod logs
    and exec (else 503); `cache` the list cache (the service runs its refresher; by
    default one is made over the fleet's objects); `release_keys` the public keys
    (base64) agent releases are signed with, given to joining nodes; `brokers` the
    broker tier (proposal 0007: `/api/v1/brokermap` routes, and a joining node's
    broker list; without it a node is told `broker` alone, as its one-entry list);
    `cluster` a shard's global objects (proposal 0008): writes of global kinds go to
    the shared store by compare-and-set and return once this shard's replica applied
    them; single reads carry `metadata.resourceVersion`."""
    api = settings or ApiSettings()
    lists = cache if cache is not None else ListCache(fleet.objects)
    if cluster is not None:  # lists and watches carry resourceVersion
        lists.versions = cluster.version_by_key
    auth_cfg = auth_settings or AuthSettings()
    access = auth if auth is not None else Auth(store=fleet.store, enabled=False)
    broker_tls = bool(broker[2]) if len(broker) > 2 else False  # type: ignore[misc]
    joins = RateLimiter(per_minute=auth_cfg.join_rate, burst=auth_cfg.join_burst)
    app = FastAPI(title="edgefed cloudcore", version="0.2.0", responses=ERRORS,
                  description="The cloud API of edgefed. Errors are always `ErrorBody`.")
    metrics.describe(JOINS, "Join calls by result: Joined, or why one was refused "
                            "(UnknownJoinToken, JoinTokenUsedUp, CaPinMismatch, "
                            "ReservedName, TooManyRequests, ...).")
    metrics.describe(REFUSED, "API calls refused before they did anything, by reason "
                              "(Unauthenticated, Forbidden, BodyTooLarge, join refusals).")
    app.add_middleware(BodyLimit, max_bytes=api.max_body_bytes,
                       on_refused=lambda: metrics.inc(REFUSED, reason="BodyTooLarge"))

    @app.exception_handler(ObjectError)
    async def _object_error(_: Request, exc: ObjectError) -> JSONResponse:
        return _error(422, exc.message, exc.field, errors=violations_of(exc))

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return _error(409, exc.message)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        metrics.inc(REFUSED, reason=exc.reason)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if isinstance(exc, TooManyJoins):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return _error(exc.status, exc.message, exc.field, reason=exc.reason, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]
                                     if p not in ("body", "query", "path")) or None,
                   "message": e["msg"]} for e in exc.errors()[:64]]
        if not errors:
            errors = [{"field": None, "message": "invalid request"}]
        field, msg = errors[0]["field"], errors[0]["message"]
        return _error(422, f"{field}: {msg}" if field else msg, field, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(TemporaryError)
    async def _temporary(_: Request, exc: TemporaryError) -> JSONResponse:
        return _error(503, str(exc), reason=type(exc).__name__,
                      headers={"Retry-After": str(max(1, math.ceil(exc.delay)))})

    @app.exception_handler(ClusterError)
    async def _cluster(_: Request, exc: ClusterError) -> JSONResponse:
        log.error("shared store: %s", exc)
        return _error(503 if isinstance(exc, KVUnavailable) else 500,
                      f"shared store (NATS): {exc}", reason=type(exc).__name__)

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
    log_reader = needs(Role.OPERATOR, "reading pod logs")
    map_operator = needs(Role.OPERATOR, "changing the broker map")

    # -- the web console at / (cloudcore/console; its pages call the routes below) ----
    from cloudcore.console import console_router  # here: the console imports api.selectors
    app.include_router(console_router(fleet, access=access))

    if brokers is not None:
        app.include_router(brokermap_router(brokers, reader=reader, operator=map_operator,
                                            insecure=not access.enabled))

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

    @app.get("/metrics/edge", tags=["health"],
             summary="Prometheus metrics scraped on the devices: the agents' own and those "
                     "of pods annotated prometheus.io/scrape, labelled node, namespace, pod "
                     "(text format 0.0.4; a read-only token: it names nodes and pods)")
    async def prometheus_edge(_: Principal = reader) -> PlainTextResponse:
        series = fleet.node_ops.edge_series
        series.expire()
        text = await asyncio.to_thread(series.render)  # long at fleet scale: off the loop
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    # -- identity ---------------------------------------------------------------------

    @app.get("/api/v1/whoami", summary="The caller's name and role", tags=["auth"])
    async def whoami(who: Principal = Depends(caller)) -> dict[str, Any]:
        return {"name": who.name, "role": who.role.label, "authEnabled": access.enabled}

    @app.get("/api/v1/ca", summary="The fleet CA (no token needed)", tags=["auth"],
             response_model=CaInfo,
             description="What a joining agent fetches first, unverified, and checks "
                         "against the pin in its join token before it trusts anything "
                         "else from this server.")
    async def fleet_ca() -> dict[str, Any]:
        if ca is None:
            raise NotFound("fleet CA of this server", "ca")
        return {"caCert": ca.cert_pem, "caCertHash": ca.hash}

    def _check_node_name(name: str) -> None:
        if not valid_node_name(name):
            raise ObjectError("name: must be a lowercase DNS-1123 name (a-z, 0-9, '-', '.')",
                              field="name")
        why = reserved_node_name(name)
        if why is not None:
            raise ObjectError(f"name: reserved: {why}", field="name")

    def _client_cert(name: str) -> dict[str, Any]:
        assert ca is not None
        issued = ca.issue_client(name)
        access.record_client_cert(name, serial=issued.serial, not_after=issued.not_after)
        return {"cert": issued.cert, "key": issued.key, "notAfter": issued.not_after}

    @app.post("/api/v1/join", summary="Join a node with a join token",
              tags=["nodes"], response_model=JoinResponse, response_model_exclude_none=True,
              responses={429: {"model": ErrorBody, "description": "Too many joins from "
                               "this address; see Retry-After."}},
              description="Validates the join token (401 `unknown or revoked join token`, "
                          "`join token expired`, `join token used up`, a CA pin that is "
                          "not this server's; 403 for a token bound to another name), "
                          "refuses invalid and reserved names (422), registers the node "
                          "with the token's and the request's labels, and returns the "
                          "broker address, new per-node broker credentials and node key "
                          "(shown only here), the fleet CA and, with --node-certs, a "
                          "client certificate. 409 if a node of that name has already "
                          "joined; 429 past the per-address rate limit. The broker may "
                          "learn the new password up to a second after this answer (its "
                          "password file is rewritten in batches): agents retry their "
                          "connection with backoff.")
    async def join(body: JoinRequest, request: Request) -> dict[str, Any]:
        try:
            out = await _join(body, request)
        except AuthError as exc:
            metrics.inc(JOINS, result=exc.reason)
            raise
        except ObjectError:
            metrics.inc(JOINS, result="ReservedName" if reserved_node_name(body.name)
                        else "Invalid")
            raise
        metrics.inc(JOINS, result="Joined")
        return out

    async def _join(body: JoinRequest, request: Request) -> dict[str, Any]:
        wait = joins.take(request.client.host if request.client else "-")
        if wait > 0:
            raise TooManyJoins(f"too many joins from this address; retry in {wait:.0f} s",
                               retry_after=wait)
        rec = access.check_join_token(body.token, name=body.name,
                                      pin=ca.pin if ca is not None else None)
        _check_node_name(body.name)
        access.check_can_join(body.name)
        if cluster is not None and await cluster.registered(body.name):
            raise JoinRefused(f"node {body.name!r} has already joined (through another "
                              f"shard); delete it first (fedctl node delete {body.name}) "
                              "to join it again", field="name")
        counted = "not_shared"  # a shard counts a shared token's uses in KV
        if cluster is not None:
            counted = await cluster.use_join_token(rec["id"])
            if counted == "used_up":
                raise JoinTokenUsedUp("join token used up (through other shards)",
                                      field="token")
        labels = {**body.labels, **rec.get("labels", {})}
        node = fleet.join_node(body.name, labels=labels, arch=body.arch)
        creds = access.issue_credentials(body.name)
        home = {"host": broker[0], "port": broker[1], "tls": broker_tls}
        if brokers is not None:
            map_version, urls = brokers.for_join(body.name)
            first = parse_url(urls[0])
            home = {"host": first.host, "port": first.port, "tls": first.tls}
        else:
            map_version, urls = 1, [url_of(broker[0], broker[1], tls=broker_tls)]
        out: dict[str, Any] = {
            "node": dump_object(node),
            "broker": home,  # the home broker, for agents from before the broker tier
            "brokers": urls,
            "broker_map_version": map_version,
            "credentials": {"username": creds.username, "password": creds.password},
            "key": creds.key_b64,
            "caCert": ca.cert_pem if ca is not None else None,
            "releaseKeys": list(release_keys)}
        if auth_cfg.node_certs and ca is not None:
            out["clientCert"] = _client_cert(body.name)
        if cluster is not None:  # every shard learns the node and its credentials
            try:
                await cluster.register(body.name)
            except NotReplicated as exc:  # shared, only this replica is slow: the answer
                log.warning("join %s: %s", body.name, exc)  # holds the only copy of the
                # node's password and key, so it is given
            except BaseException:
                # not shared: undone here too, so the node may join again
                with contextlib.suppress(NotFound):
                    fleet.delete("Node", None, body.name)
                access.forget_node(body.name)
                await flush()
                raise
        if counted == "not_shared":
            access.used_join_token(rec["id"])
        await flush()
        log.info("node %s joined with join token %s", body.name, rec["id"])
        return out

    @app.post("/api/v1/nodes/{name}/certificate", summary="Renew a node's client "
              "certificate (authenticated by the node key)", tags=["nodes"],
              response_model=ClientCert,
              description="Body `{ts, mac}`: mac = hex HMAC-SHA256(k_up, "
                          "'renew|<name>|<ts>') (shared.seal.renew_mac). Answers a new "
                          "certificate and key; the old one stays valid until it expires, "
                          "so the agent reconnects with the new one when it likes. 409 "
                          "when this server does not issue node certificates.")
    async def renew_certificate(name: str, body: RenewRequest) -> dict[str, Any]:
        if not auth_cfg.node_certs or ca is None:
            raise _Refused(409, "this cloudcore does not issue node certificates "
                                "(start it with --node-certs)")
        access.verify_renewal(name, ts=body.ts, mac=body.mac)
        cert = _client_cert(name)
        await flush()
        log.info("node %s renewed its client certificate", name)
        return cert

    @app.post("/api/v1/jointokens", summary="Create a join token (admin)", tags=["auth"],
              dependencies=[admin],
              description="`token` is `id.secret.pin` (pin: hex SHA-256 of the fleet CA's "
                          "DER); it joins at most `uses` nodes (default 1), only a node "
                          "called `name` if given.")
    async def create_join_token(body: JoinTokenRequest) -> dict[str, Any]:
        ttl = body.ttlSeconds or auth_cfg.join_token_ttl
        if ttl > auth_cfg.max_join_token_ttl:
            raise ObjectError(f"ttlSeconds: at most {auth_cfg.max_join_token_ttl:g}",
                              field="ttlSeconds")
        if body.name is not None:
            _check_node_name(body.name)
        token, rec = access.create_join_token(ttl=ttl, labels=body.labels,
                                              description=body.description,
                                              uses=body.uses, name=body.name)
        if cluster is not None:  # usable through every shard
            await cluster.share_token("join", rec["id"])
        await flush()
        if ca is not None:  # the printed token pins the CA (proposal 0002)
            token = f"{token}.{ca.pin}"
        return {"token": token, **public(rec),
                "caCertHash": ca.hash if ca is not None else None}

    @app.get("/api/v1/jointokens", summary="List join tokens, without secrets (admin)",
             tags=["auth"], dependencies=[admin])
    async def list_join_tokens() -> dict[str, Any]:
        return {"items": [public(r) for _, r in sorted(access.join_tokens.items())]}

    @app.delete("/api/v1/jointokens/{token_id}", summary="Revoke a join token (admin)",
                tags=["auth"], dependencies=[admin])
    async def revoke_join_token(token_id: str) -> dict[str, Any]:
        rec = access.revoke_join_token(token_id.split(".", 1)[0])
        if cluster is not None:
            await cluster.drop_token("join", rec["id"])
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
        if cluster is not None:  # usable through every shard
            await cluster.share_token("api", rec["id"])
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
        if cluster is not None:
            await cluster.drop_token("api", rec["id"])
        await flush()
        return {"deleted": public(rec)}

    # -- workloads ---------------------------------------------------------------------

    @app.post("/api/v1/apply", summary="Create or update objects (all or nothing, or each "
              "on its own with perDocument)",
              tags=["objects"], dependencies=[operator],
              description="All or nothing by default: any refused document refuses the "
                          "call (422 with `errors` listing every violation of every "
                          "document, 404 for a namespace that does not exist). With "
                          "`perDocument: true` every document is judged on its own, as "
                          "kubectl does: the answer is 200 with one result per document, "
                          "`status: applied` (and `action`) or `status: refused` (with "
                          "`code`, `error`, `field` and `errors`), and the documents that "
                          "passed are applied.")
    async def apply(body: ApplyBody) -> dict[str, Any]:
        objs: list[Any] = []
        versions: list[str | None] = []  # metadata.resourceVersion of each object
        slots: list[Any] = []  # per document item: its index in objs, or its refusal
        wheres: list[str] = []
        for i, doc in enumerate(body.documents):
            items = expand_lists(doc)
            for j, item in enumerate(items):
                where = f"documents[{i}]" + (f".items[{j}]" if items != [doc] else "")
                wheres.append(where)
                try:
                    obj = _owned_labels(parse_object(without_server_fields(item)))
                    check_wire_limits(obj, wire)
                except ObjectError as exc:
                    slots.append(_refused_document(where, item, exc))
                    continue
                slots.append(len(objs))
                objs.append(obj)
                versions.append(_version_of(item))
        if len(slots) > MAX_DOCUMENTS:
            raise ObjectError(f"documents: at most {MAX_DOCUMENTS} objects",
                              field="documents")
        out: dict[str, Any] = {"dryRun": body.dryRun}
        shared_write = cluster is not None and not body.dryRun
        if body.perDocument and shared_write:
            verdicts, made = await _apply_each_shared(objs, versions, body.createNamespaces)
            await flush()
            out["perDocument"] = True
            out["results"] = [
                slot if isinstance(slot, dict) else _verdict(wheres[k], objs[slot],
                                                             verdicts[slot])
                for k, slot in enumerate(slots)]
        elif body.perDocument:
            verdicts, made = fleet.apply_each(objs, dry_run=body.dryRun,
                                              create_namespaces=body.createNamespaces)
            if not body.dryRun:
                await flush()
            out["perDocument"] = True
            out["results"] = [
                slot if isinstance(slot, dict) else _verdict(wheres[k], objs[slot],
                                                             verdicts[slot])
                for k, slot in enumerate(slots)]
        else:
            bad = [slot for slot in slots if isinstance(slot, dict)]
            if bad:
                raise InvalidDocuments(bad)
            made = (missing_namespaces(objs, fleet.namespaces) if body.createNamespaces
                    else [])
            if body.dryRun:
                results = fleet.plan(objs, create_namespaces=body.createNamespaces)
            elif shared_write:
                results = await _apply_shared(objs, versions, body.createNamespaces)
                await flush()
            else:
                results = fleet.apply(objs, create_namespaces=body.createNamespaces)
                await flush()
            out["results"] = [r.dump() for r in results]
        if made:
            out["namespacesCreated"] = made
        return out

    async def _apply_shared(objs: list[Any], versions: list[str | None],
                            create_namespaces: bool) -> list[ApplyResult]:
        """A shard's all-or-nothing apply: validated here, global kinds written to the
        shared store (every shard applies them from there), Nodes applied locally."""
        assert cluster is not None
        results = fleet.plan(objs, create_namespaces=create_namespaces)
        made = (missing_namespaces(objs, fleet.namespaces) if create_namespaces else [])
        glob = [i for i, o in enumerate(objs) if is_global(o.kind)]
        await cluster.apply([objs[i] for i in glob], [results[i] for i in glob],
                            [versions[i] for i in glob], namespaces=made)
        local = [o for o in objs if not is_global(o.kind)]
        if local:
            fleet.apply(local)
            for o in local:  # a Node's labels and spec reach every shard
                await cluster.node_changed(o.metadata.name)
        return results

    async def _apply_each_shared(objs: list[Any], versions: list[str | None],
                                 create_namespaces: bool) -> tuple[list[Any], list[str]]:
        """`apply_each` for a shard: judged here (dry run), then each passed object
        written on its own (a stale resourceVersion refuses that document only)."""
        assert cluster is not None
        verdicts, made = fleet.apply_each(objs, dry_run=True,
                                          create_namespaces=create_namespaces)
        local: list[int] = []
        first = True
        for i, v in enumerate(verdicts):
            if not isinstance(v, ApplyResult):
                continue
            if not is_global(objs[i].kind):
                local.append(i)
                continue
            try:
                await cluster.apply([objs[i]], [v], [versions[i]],
                                    namespaces=made if first else ())
                first = False
            except (Conflict, ObjectError, NotFound) as exc:
                verdicts[i] = exc
        if local:
            done, _ = fleet.apply_each([objs[i] for i in local],
                                       create_namespaces=create_namespaces)
            for i, v in zip(local, done, strict=True):
                verdicts[i] = v
                if isinstance(v, ApplyResult):
                    await cluster.node_changed(objs[i].metadata.name)
        return verdicts, made

    def _version_of(item: Any) -> str | None:
        """The resourceVersion a document carries (shards compare it; the embedded
        mode ignores it, as before)."""
        if cluster is None or not isinstance(item, dict):
            return None
        meta = item.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        return str(rv) if rv not in (None, "") else None

    def _versioned(kind: str, namespace: str | None, doc: dict[str, Any]) -> dict[str, Any]:
        if cluster is not None and is_global(kind):
            rv = cluster.version_of(kind, namespace, doc["metadata"]["name"])
            if rv is not None:
                doc["metadata"]["resourceVersion"] = str(rv)
        return doc

    def _verdict(where: str, obj: Any, verdict: Any) -> dict[str, Any]:
        """One per-document result of an object that parsed: applied, or refused by the
        fleet (a namespace that does not exist, the pod security policy...)."""
        if isinstance(verdict, ApplyResult):
            return {"status": "applied", **verdict.dump()}
        kind, ns, name = ident(obj)
        code = 404 if isinstance(verdict, NotFound) else 409 if isinstance(
            verdict, Conflict) else 422
        message = verdict.message if isinstance(verdict, ObjectError | Conflict) else str(
            verdict)
        field = verdict.field if isinstance(verdict, ObjectError) else (
            "metadata.namespace" if isinstance(verdict, NamespaceNotFound) else None)
        errors = (violations_of(verdict) if isinstance(verdict, ObjectError)
                  else [{"field": field, "message": message}])
        return {"status": "refused", "kind": kind, "namespace": ns, "name": name,
                "document": where, "code": code, "error": message,
                "field": field, "errors": errors}

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
                         "that stops matching the filters is sent as DELETED. On a shard, "
                         "a watch of a global kind (workloads, ConfigMaps, Secrets, ...) "
                         "resumes from `resourceVersion` (the last one a client saw, on "
                         "any shard: every shard gives the same): no initial events; each "
                         "object changed since, as MODIFIED, and each deleted since, as "
                         "DELETED, then the changes as they come; 410 if the deletions "
                         "since were already forgotten (list again).")
    async def watch(*, plural: str, namespace: str | None = None,
                    labelSelector: str | None = None, node: str | None = None,
                    name: str | None = None, sendInitialEvents: bool = True,
                    heartbeatSeconds: Annotated[float | None, Query(ge=0.05, le=300)] = None,
                    resourceVersion: str | None = None) -> StreamingResponse:
        kind = _kind(plural)
        selector = parse_selector(labelSelector) if labelSelector else None
        beat = heartbeatSeconds or api.watch_heartbeat
        resume = None  # a shard's watch of a global kind from a revision
        if resourceVersion not in (None, "", "0") and cluster is not None \
                and is_global(kind):
            try:
                since = int(str(resourceVersion))
            except ValueError:
                raise ObjectError(f"resourceVersion: {resourceVersion!r} is not a version "
                                  "this server gave", field="resourceVersion") from None
            await cluster.wait_applied(since)  # given by a shard ahead of this one
            resume = cluster.changes_since(kind, since)
            if resume is None:
                raise StarletteHTTPException(410, f"resourceVersion {since} is too old: "
                                             "deletions since then are forgotten; list "
                                             "again and watch from the list's version")

        def want(key: Any, obj: Any) -> bool:
            if name is not None and (key if kind in CLUSTER_KINDS else key[1]) != name:
                return False
            return fleet.matches(kind, key, obj, namespace=namespace, selector=selector,
                                 node=node)

        def _wanted_gone(key: Any, body: dict[str, Any]) -> bool:
            """Whether a deleted object (as it was) matched the watch's filters."""
            meta = body.get("metadata") or {}
            if name is not None and meta.get("name") != name:
                return False
            if namespace is not None and kind not in CLUSTER_KINDS \
                    and meta.get("namespace") != namespace:
                return False
            return selector is None or selector(meta.get("labels") or {})

        def _resumed(since: tuple[list[Any], list[tuple[Any, dict[str, Any]]]],
                     sent: set[Any]) -> bytes:
            """A resumed watch's first lines: DELETED for what went since the client's
            version, MODIFIED for what changed since (`sent`: every matching object)."""
            objects = fleet.table_of(kind)
            sent.update(k for k, o in objects.items() if want(k, o))
            changed, deleted = since
            lines = [_line("DELETED", json.dumps(body, separators=(",", ":")).encode())
                     for k, body in deleted if k not in objects and _wanted_gone(k, body)]
            lines += [_line("MODIFIED", lists.encoded(kind, k)) for k in changed if k in sent]
            return b"".join(lines) + b'{"type":"BOOKMARK"}\n'

        watcher = fleet.watches.subscribe(kind)

        async def stream() -> AsyncIterator[bytes]:
            sent: set[Any] = set()
            try:
                if resume is not None:
                    yield _resumed(resume, sent)
                elif sendInitialEvents:
                    chunk: list[bytes] = []
                    table = fleet.table_of(kind)
                    for key in list(fleet.sorted_keys(kind)):
                        obj = table.get(key)
                        if obj is None or not want(key, obj):
                            continue
                        sent.add(key)
                        chunk.append(_line("ADDED", lists.encoded(kind, key)))
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
                                             lists.encoded(kind, key)))
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
                         "`<redacted>` unless `reveal=true` (operator; then `fields` is "
                         "ignored).")
    async def list_objects(*, request: Request, plural: str, namespace: str | None = None,
                           labelSelector: str | None = None,
                           node: str | None = None,
                           limit: Annotated[int | None, Query(ge=1)] = None,
                           continue_: Annotated[str | None, Query(alias="continue")] = None,
                           fields: str | None = None, reveal: bool = False,
                           who: Principal = Depends(caller)) -> Response:
        kind = _kind(plural)
        if reveal and kind == "Secret":
            access.require(who, Role.OPERATOR, "reading Secret values (reveal=true)")
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
            parts = lists.encoded_many(kind, keys, proj)
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
        if cluster is not None:  # labels and cordon reach every shard
            await cluster.node_changed(name)
        await flush()
        return node

    @app.post("/api/v1/nodes/{name}/drain", summary="Cordon a node and move its pods away "
              "(operator)", tags=["nodes"], dependencies=[operator],
              description="Deployment pods and unpinned bare pods are rescheduled on other "
                          "nodes; DaemonSet pods and pods pinned by spec.nodeName stay.")
    async def drain(name: str) -> dict[str, Any]:
        result = fleet.drain(name)
        if cluster is not None:  # the cordon and the drain reach every shard
            await cluster.node_changed(name, drain=True)
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
        if cluster is not None:  # every shard deletes it and its credentials
            await cluster.unregister(name)
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

    @app.get("/api/v1/pods/{namespace}/{name}/log", summary="A container's log (streamed, "
             "operator)", tags=["pods"], dependencies=[log_reader],
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

    def cluster_scoped(kind: str, plural: str, snake: str, *, what: str, delete: str,
                       description: str, conflict: bool) -> None:
        """GET (read-only) and DELETE (operator) of one object of a cluster-scoped kind
        at /api/v1/{plural}/{name}."""
        async def get_one(name: str) -> dict[str, Any]:
            return _versioned(kind, None, fleet.get(kind, None, name))

        async def delete_one(name: str) -> dict[str, Any]:
            deleted = (await cluster.delete(kind, None, name) if cluster is not None
                       else fleet.delete(kind, None, name))
            await flush()
            return {"deleted": deleted}

        path = f"/api/v1/{plural}/{{name}}"
        app.add_api_route(path, get_one, methods=["GET"], name=f"get_{snake}",
                          summary=f"Get one {what}", tags=["objects"],
                          dependencies=[reader])
        app.add_api_route(path, delete_one, methods=["DELETE"], name=f"delete_{snake}",
                          summary=delete, tags=["objects"], dependencies=[operator],
                          responses={409: {"model": ErrorBody}} if conflict else None,
                          description=description)

    cluster_scoped(
        "PriorityClass", "priorityclasses", "priority_class", what="PriorityClass",
        delete="Delete a PriorityClass (operator)", conflict=True,
        description="Pods keep the priority they got from it (as in Kubernetes); a pod or "
                    "template naming it is refused at its next apply. The built-in "
                    "system-node-critical and system-cluster-critical cannot be deleted "
                    "(409).")
    cluster_scoped(
        "AgentUpgrade", "agentupgrades", "agent_upgrade", what="AgentUpgrade",
        delete="Delete an AgentUpgrade (operator)", conflict=False,
        description="Stops it: its nodes' release entries are removed and they keep "
                    "running what they run (an upgrade in flight on a node finishes or "
                    "rolls back there).")
    cluster_scoped(
        "Namespace", "namespaces", "namespace", what="namespace",
        delete="Delete an empty namespace (operator)", conflict=True,
        description="Only a namespace that holds no object may be deleted: 409 names what "
                    "it still holds (edgefed does not delete a namespace's objects with "
                    "it, unlike Kubernetes). `default` and `kube-system` always exist "
                    "(409).")

    @app.get("/api/v1/{plural}/{namespace}/{name}", summary="Get one namespaced object",
             tags=["objects"],
             description="A Secret's values need operator (403 for read-only), as "
                         "Kubernetes' `view` role does not read Secrets.")
    async def get_object(plural: str, namespace: str, name: str,
                         who: Principal = Depends(caller)) -> dict[str, Any]:
        kind = _namespaced(plural)
        access.require(who, Role.OPERATOR if kind == "Secret" else Role.READ_ONLY,
                       "reading Secret values" if kind == "Secret" else "reading")
        return _versioned(kind, namespace, fleet.get(kind, namespace, name))

    @app.delete("/api/v1/{plural}/{namespace}/{name}",
                summary="Delete a namespaced object and what it owns (operator)",
                tags=["objects"], dependencies=[operator])
    async def delete_object(plural: str, namespace: str, name: str) -> dict[str, Any]:
        kind = _namespaced(plural)
        deleted = (await cluster.delete(kind, namespace, name)
                   if cluster is not None and is_global(kind)
                   else fleet.delete(kind, namespace, name))
        await flush()
        return {"deleted": deleted}

    return app


def check_wire_limits(obj: Any, limits: Limits) -> None:
    """Refuse (ObjectError, naming the field and the limit) a ConfigMap or Secret that
    could never reach a node: a value over the wire's per-string limit, or, for a
    Secret, all its values together over it once sealed (a sealed Secret travels as
    one ciphertext, shared.seal)."""
    cap = limits.max_str_bytes
    if isinstance(obj, ConfigMap):
        for key, value in obj.data.items():
            size = len(value.encode())
            if size > cap:
                raise ObjectError(f"data[{key!r}]: {size} bytes, over the per-value limit "
                                  f"of {cap} bytes a node can receive", field=f"data.{key}")
        total = sum(len(k.encode()) + len(v.encode()) for k, v in obj.data.items())
        budget = limits.max_message_bytes - ENTRY_OVERHEAD
        if total > budget:
            raise ObjectError(f"data: {total} bytes in all, over the {budget} bytes one "
                              "ConfigMap may hold to fit a message to a node", field="data")
    elif isinstance(obj, Secret):
        entry = secret_entry(obj.normalised())
        for key, value in entry["data"].items():
            size = len(value.encode()) if isinstance(value, str) else len(value)
            if size > cap:
                raise ObjectError(f"data[{key!r}]: {size} bytes (base64), over the "
                                  f"per-value limit of {cap} bytes a node can receive",
                                  field=f"data.{key}")
        sealed = seal.sealed_size(entry)
        if sealed > cap:
            raise ObjectError(f"data: {sealed} bytes sealed, over the limit of {cap} bytes "
                              "for one Secret sent to a node (all values together)",
                              field="data")


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, before the app parses
    it. A Content-Length over the cap is refused at once; a body without one (chunked)
    is counted as it streams and refused when it grows past the cap."""

    def __init__(self, app: Any, *, max_bytes: int,
                 on_refused: Callable[[], None] = lambda: None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length < 0 or length > self.max_bytes:
                    await self._refuse(send, length)
                    return
        seen = 0
        limit = self.max_bytes

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.on_refused()
                    raise StarletteHTTPException(413, f"request body over {limit} bytes")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Any, length: int) -> None:
        self.on_refused()
        what = f"{length} bytes" if length >= 0 else "an invalid Content-Length"
        body = json.dumps({"error": f"request body of {what}, over the limit of "
                                    f"{self.max_bytes} bytes", "field": None}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _Refused(Exception):
    """A logs/exec call answered with `status` and a JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _line(kind: str, raw: bytes) -> bytes:
    return b'{"type":"' + kind.encode() + b'","object":' + raw + b"}\n"
