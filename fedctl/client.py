"""The HTTP client of cloudcore's API: the only module of fedctl that imports httpx.

Every transport failure becomes `Unreachable` and every HTTP error becomes a
`ServerError` (or `NotFound`) carrying the server's message and field, so the
commands above never see an httpx exception. Tests inject an
`httpx.MockTransport` or point the client at a stub server.
"""

from __future__ import annotations

import json as jsonlib
import queue
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from fedctl.config import Settings
from fedctl.errors import NotFound, ServerError, Unreachable
from fedctl.kinds import Kind

API = "/api/v1"
PAGE = 5000
"""Objects per list request: big enough that 100k nodes take 20 round trips, small
enough that one page is a few MB."""
NDJSON = "application/x-ndjson"


def tls_verify(settings: Settings) -> ssl.SSLContext | bool:
    """What httpx verifies an https server with: the configured CA file (cloudcore's
    fleet CA) alone, else the system bundle; False when verification is skipped, and
    for plain http (which never uses TLS: no CA bundle to load, ~0.06 s a command)."""
    if not settings.server.startswith("https:") or settings.insecure_skip_tls_verify:
        return False
    if settings.ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise Unreachable(f"cannot load the CA file {settings.ca_file}: {exc}") from exc


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def unreachable(server: str, exc: httpx.TransportError, *, ca_file: object = None,
                what: str = "cannot reach cloudcore at") -> Unreachable:
    """One clear line for a transport failure; a TLS failure says what to do about it."""
    cause = _ssl_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        code = getattr(cause, "verify_code", None)
        msg = getattr(cause, "verify_message", None) or str(cause)
        host = server.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return Unreachable(f"TLS: cloudcore's certificate at {server} is not valid for "
                               f"host {host!r} ({msg}); use the name or address it was "
                               "issued for")
        if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
            return Unreachable(f"TLS: cloudcore's certificate at {server} has expired")
        trusted = f"the CA in {ca_file}" if ca_file else "the system's CA bundle"
        return Unreachable(f"TLS: cloudcore's certificate at {server} is not signed by "
                           f"{trusted} ({msg}); pass --certificate-authority FILE (cloudcore "
                           "serves its CA at /api/v1/ca) or set it in the context")
    if cause is not None:
        if "WRONG_VERSION_NUMBER" in str(cause) or "record layer" in str(cause):
            return Unreachable(f"TLS: {server} does not speak TLS (is cloudcore running "
                               "with --insecure? then use an http:// URL)")
        return Unreachable(f"TLS handshake with {server} failed: {cause}")
    if server.startswith("http:") and isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        # a TLS server hangs up on a plain request (reset, or no response at all)
        return Unreachable(f"{what} {server}: {exc or type(exc).__name__} (cloudcore serves "
                           "HTTPS by default: use an https:// URL)")
    return Unreachable(f"{what} {server}: {exc or type(exc).__name__}")


@dataclass(frozen=True)
class ApplyAnswer:
    """cloudcore's answer to an apply."""

    results: list[dict[str, Any]]
    """One per document, in order."""
    per_document: bool
    """True when cloudcore judged each document on its own (each result has `status`:
    applied or refused); False from a cloudcore that only applies all or nothing."""
    namespaces_created: list[str]
    """Namespaces cloudcore created for the documents (`create_namespaces`)."""


def _path(kind: Kind, namespace: str | None, name: str) -> str:
    if kind.namespaced:
        return (
            f"{API}/{kind.plural}/{quote(namespace or 'default', safe='')}/{quote(name, safe='')}"
        )
    return f"{API}/{kind.plural}/{quote(name, safe='')}"


def _describe(kind: Kind, namespace: str | None, name: str) -> str:
    if kind.namespaced:
        return f'{kind.singular} "{name}" in namespace "{namespace or "default"}"'
    return f'{kind.singular} "{name}"'


class ApiClient:
    """Synchronous client; use as a context manager so the connection pool is closed."""

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        self.server = settings.server
        self.timeout = settings.timeout
        headers = {"Accept": "application/json", "User-Agent": "fedctl"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._ca_file = settings.ca_file
        self._http = httpx.Client(
            base_url=settings.server,
            timeout=settings.timeout,
            transport=transport,
            headers=headers,
            # FEDCTL_SERVER is explicit; a stray HTTP(S)_PROXY must not reroute it.
            trust_env=False,
            verify=tls_verify(settings),
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the contract ----------------------------------------------------------

    def apply(
        self, documents: list[dict[str, Any]], *, dry_run: bool = False
    ) -> list[dict[str, Any]]:
        """Create or update the documents, all or nothing; one result per document."""
        return self.apply_documents(documents, dry_run=dry_run).results

    def apply_documents(
        self, documents: list[dict[str, Any]], *, dry_run: bool = False,
        per_document: bool = False, create_namespaces: bool = False,
    ) -> ApplyAnswer:
        """Create or update the documents; one result per document, in order.

        With `per_document`, cloudcore judges each document on its own and answers a
        result for each, `status` applied or refused (with `code`, `error`, `errors`);
        a cloudcore from before that ignores the request and answers all or nothing
        (`ApplyAnswer.per_document` is then False and a refusal is a ServerError).
        `create_namespaces` asks cloudcore to create the namespaces the documents name
        that do not exist (ignored by a cloudcore from before namespaces had to exist).

        A request that reached cloudcore but got no answer in time (a read timeout)
        may have been applied all the same: the error says so and names the objects,
        instead of the 'cannot reach cloudcore' of a request that never arrived."""
        body: dict[str, Any] = {"documents": documents, "dryRun": dry_run}
        if per_document:
            body["perDocument"] = True
        if create_namespaces:
            body["createNamespaces"] = True
        try:
            resp = self._send("POST", f"{API}/apply", json=body, read_timeout_applies=True)
        except httpx.ReadTimeout as exc:
            refs = [_ref(d) for d in documents]
            shown = ", ".join(refs[:5]) + (f" and {len(refs) - 5} more" if len(refs) > 5 else "")
            see = f"fedctl get {refs[0].replace('/', ' ', 1)}" if len(refs) == 1 else (
                "fedctl get")
            raise Unreachable(
                f"cloudcore did not answer the apply of {shown} within {self.timeout:g} s "
                f"(--request-timeout): it may have applied {'it' if len(refs) == 1 else 'them'}"
                f" all the same; see `{see}` before retrying") from exc
        answer = self._decode(resp, what=None)
        results = answer.get("results")
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise ServerError("cloudcore answered apply without a 'results' list", status=200)
        made = answer.get("namespacesCreated")
        return ApplyAnswer(results=results, per_document=answer.get("perDocument") is True,
                           namespaces_created=[str(n) for n in made]
                           if isinstance(made, list) else [])

    @staticmethod
    def _params(
        kind: Kind, namespace: str | None, selector: str | None, node: str | None
    ) -> dict[str, str]:
        params: dict[str, str] = {}
        if namespace is not None and kind.namespaced:
            params["namespace"] = namespace
        if selector:
            params["labelSelector"] = selector
        if node:
            params["node"] = node
        return params

    def list(
        self,
        kind: Kind,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        node: str | None = None,
        fields: tuple[str, ...] | None = None,
        page: int = PAGE,
    ) -> list[dict[str, Any]]:
        """Objects of a kind; `namespace=None` means all namespaces. Pages through
        the list `page` objects at a time; `fields` asks only for those paths.

        A fetcher thread asks for page n+1 (from the `X-Continue` header) as soon as
        page n has arrived, before this thread starts parsing page n, so cloudcore
        encodes the next page while fedctl decodes this one. (Asking from this thread
        after handing over would not overlap: `json.loads` keeps the GIL, so the
        request would only leave once the page was parsed.)"""
        params = self._params(kind, namespace, selector, node)
        params["limit"] = str(page)
        if fields:
            params["fields"] = ",".join(fields)
        url = f"{API}/{kind.plural}"

        def fetch(cont: str | None) -> httpx.Response:
            return self._send("GET", url, params={**params, "continue": cont} if cont
                              else params)

        pages: queue.Queue[tuple[httpx.Response | BaseException, str | None]] = queue.Queue()
        stop = threading.Event()

        def fetcher() -> None:
            cont: str | None = None
            while not stop.is_set():
                try:
                    resp = fetch(cont)
                except BaseException as exc:  # handed to the caller's thread
                    pages.put((exc, None))
                    return
                ahead = resp.headers.get("x-continue") if resp.status_code < 400 else None
                pages.put((resp, ahead))
                if not ahead:
                    return
                cont = ahead

        thread = threading.Thread(target=fetcher, name="fedctl-pages", daemon=True)
        thread.start()
        items: list[dict[str, Any]] = []
        try:
            while True:
                got_resp, ahead = pages.get()
                if isinstance(got_resp, BaseException):
                    raise got_resp
                got, cont = self._items(kind, self._decode(got_resp, what=None))
                items += got
                if not cont:
                    return items
                if cont != ahead:  # the fetcher follows the header, which must agree
                    raise ServerError(f"cloudcore's page of {kind.plural} has a continue "
                                      "token but no matching X-Continue header", status=200)
        finally:
            stop.set()
            thread.join(timeout=0.1)

    def list_page(
        self,
        kind: Kind,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        node: str | None = None,
        fields: tuple[str, ...] | None = None,
        limit: int | None = None,
        cont: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page: (items, continue token or None on the last page)."""
        params = self._params(kind, namespace, selector, node)
        if limit:
            params["limit"] = str(limit)
        if cont:
            params["continue"] = cont
        if fields:
            params["fields"] = ",".join(fields)
        return self._items(kind, self._request("GET", f"{API}/{kind.plural}", params=params))

    @staticmethod
    def _items(kind: Kind, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        items = body.get("items")
        if not isinstance(items, list):
            raise ServerError(f"cloudcore answered GET {kind.plural} without 'items'", status=200)
        nxt = body.get("continue")
        return items, nxt if isinstance(nxt, str) and nxt else None

    def list_lines(
        self,
        kind: Kind,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        node: str | None = None,
        cont: str | None = None,
        page: int = PAGE,
    ) -> Iterator[bytes]:
        """Every object from `cont` on as raw compact JSON, one per item, without
        parsing it (for `-o json` of very large lists)."""
        while True:
            params = self._params(kind, namespace, selector, node)
            params["limit"] = str(page)
            if cont:
                params["continue"] = cont
            resp = self._send("GET", f"{API}/{kind.plural}", params=params,
                              headers={"Accept": NDJSON})
            if resp.status_code >= 400 or not resp.headers.get("content-type", "").startswith(
                NDJSON
            ):
                self._decode(resp, what=None)
                raise ServerError("cloudcore does not support JSON-lines lists", status=200)
            yield from (line for line in resp.content.split(b"\n") if line)
            cont = resp.headers.get("x-continue")
            if not cont:
                return

    def watch(
        self,
        kind: Kind,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        node: str | None = None,
        name: str | None = None,
        send_initial: bool = True,
        heartbeat: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Events of the server's watch stream, `{"type", "object"}`, until it ends."""
        params = self._params(kind, namespace, selector, node)
        if name:
            params["name"] = name
        if heartbeat:
            params["heartbeatSeconds"] = str(heartbeat)
        params["sendInitialEvents"] = "true" if send_initial else "false"
        timeout = httpx.Timeout(self.timeout, read=max(60.0, 3 * self.timeout))
        try:
            with self._http.stream(
                "GET", f"{API}/watch/{kind.plural}", params=params, timeout=timeout
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._decode(resp, what=None)
                for line in resp.iter_lines():
                    if line.strip():
                        yield jsonlib.loads(line)
        except httpx.TimeoutException as exc:
            raise Unreachable(f"watch on {self.server} went quiet: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc, ca_file=self._ca_file,
                              what="watch broke on") from exc
        except ValueError as exc:
            raise ServerError(f"cloudcore sent a watch line that is not JSON: {exc}",
                              status=200) from exc

    # --- logs and exec ------------------------------------------------------------

    def logs(
        self, name: str, *, namespace: str | None = None, container: str | None = None,
        tail: int | None = None, since: float | None = None, follow: bool = False,
    ) -> Iterator[bytes]:
        """A container's log as it arrives; with `follow`, until the server ends it."""
        params: dict[str, str] = {}
        if container:
            params["container"] = container
        if tail is not None:
            params["tail"] = str(tail)
        if since is not None:
            params["since"] = str(since)
        if follow:
            params["follow"] = "true"
        ns = quote(namespace or "default", safe="")
        url = f"{API}/pods/{ns}/{quote(name, safe='')}/log"
        # The server answers within ~10 s; a follow may then be quiet for up to 45 s.
        timeout = httpx.Timeout(self.timeout, read=None if follow else max(60.0, self.timeout))
        try:
            with self._http.stream("GET", url, params=params, timeout=timeout) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._decode(resp, what=None)  # the server names the pod or container
                yield from resp.iter_raw()
        except httpx.TimeoutException as exc:
            raise Unreachable(f"logs from {self.server} went quiet: {type(exc).__name__}"
                              ) from exc
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc, ca_file=self._ca_file,
                              what="logs broke from") from exc

    def exec(
        self, name: str, command: list[str], *, namespace: str | None = None,
        container: str | None = None, timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Run `command` in the pod's container: `{"exitCode", "stdout", "stderr"}`."""
        ns = quote(namespace or "default", safe="")
        url = f"{API}/pods/{ns}/{quote(name, safe='')}/exec"
        body = {"command": command, "container": container, "timeout": timeout}
        try:
            resp = self._http.post(url, json=body,
                                   timeout=httpx.Timeout(self.timeout, read=timeout + 30))
        except httpx.TimeoutException as exc:
            raise Unreachable(f"exec on {self.server}: timed out ({type(exc).__name__})"
                              ) from exc
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc, ca_file=self._ca_file) from exc
        return self._decode(resp, what=None)  # the server names the pod or container

    # --- nodes, events, tokens ---------------------------------------------------

    def patch_node(
        self, name: str, *, labels: dict[str, str | None] | None = None,
        unschedulable: bool | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"metadata": {"labels": labels or {}}, "spec": {}}
        if unschedulable is not None:
            body["spec"]["unschedulable"] = unschedulable
        return self._request("PATCH", f"{API}/nodes/{quote(name, safe='')}", json=body,
                             what=f'node "{name}"')

    def drain(self, name: str) -> dict[str, Any]:
        return self._request("POST", f"{API}/nodes/{quote(name, safe='')}/drain",
                             what=f'node "{name}"')

    def rollout(self, kind: Kind, name: str, action: str, *, namespace: str | None = None
                ) -> dict[str, Any]:
        """pause, resume, undo or retry a DaemonSet's or Deployment's rollout; the
        object after it."""
        return self._request("POST", _path(kind, namespace, name) + "/rollout",
                             json={"action": action}, what=_describe(kind, namespace, name))

    def events(self, *, obj: str | None = None, limit: int | None = None,
               type_: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, str] = {}
        if obj:
            params["object"] = obj
        if limit:
            params["limit"] = str(limit)
        if type_:
            params["type"] = type_
        items = self._request("GET", f"{API}/events", params=params).get("items")
        return items if isinstance(items, list) else []

    def call(self, method: str, path: str, *, json: Any = None,
             what: str | None = None) -> dict[str, Any]:
        """Any other API call (tokens, whoami): JSON in, JSON object out."""
        return self._request(method, f"{API}/{path}", json=json, what=what)

    def get(self, kind: Kind, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        return self._request(
            "GET", _path(kind, namespace, name), what=_describe(kind, namespace, name)
        )

    def delete(self, kind: Kind, name: str, *, namespace: str | None = None) -> None:
        self._request("DELETE", _path(kind, namespace, name), what=_describe(kind, namespace, name))

    # --- plumbing --------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        *,
        what: str | None = None,
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> dict[str, Any]:
        resp = self._send(method, url, params=params, json=json)
        return self._decode(resp, what=what)

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        read_timeout_applies: bool = False,
    ) -> httpx.Response:
        """The request, or Unreachable; with `read_timeout_applies` a read timeout (the
        request arrived, the answer did not) is raised as it is, for the caller to say
        what may have happened."""
        try:
            return self._http.request(method, url, params=params, json=json, headers=headers)
        except httpx.TimeoutException as exc:
            if read_timeout_applies and isinstance(exc, httpx.ReadTimeout):
                raise
            raise Unreachable(
                f"cannot reach cloudcore at {self.server}: timed out ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc, ca_file=self._ca_file) from exc

    def _decode(self, resp: httpx.Response, *, what: str | None) -> dict[str, Any]:
        try:
            body: Any = resp.json() if resp.content else {}
        except ValueError:
            body = None
        if resp.status_code >= 400:
            msg, field = _error_of(body, resp)
            if resp.status_code == 401:
                hint = "" if "Authorization" in resp.request.headers else (
                    " (cloudcore has auth on: pass --token, set FEDCTL_TOKEN or a context token)"
                )
                raise ServerError(f"unauthorized: {msg}{hint}", status=401, field=field)
            if resp.status_code == 403:
                raise ServerError(f"forbidden: {msg}", status=403, field=field)
            if resp.status_code == 404:
                raise NotFound(f"{what} not found" if what else msg, status=404, field=field)
            errors = body.get("errors") if isinstance(body, dict) else None
            raise ServerError(msg, status=resp.status_code, field=field, errors=[
                e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else None)
        if not isinstance(body, dict):
            raise ServerError(
                f"cloudcore answered {resp.request.method} {resp.request.url.path} "
                f"with something that is not a JSON object (HTTP {resp.status_code})",
                status=resp.status_code,
            )
        return body


def _ref(doc: Any) -> str:
    """`deployment/NAME` (with ` -n NS` outside default) of a document, for messages."""
    if not isinstance(doc, dict):
        return "object/?"
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    ns = meta.get("namespace")
    return (f"{str(doc.get('kind', 'object')).lower()}/{meta.get('name', '?')}"
            + (f" -n {ns}" if ns and ns != "default" else ""))


def _error_of(body: Any, resp: httpx.Response) -> tuple[str, str | None]:
    """The server's `{"error", "field"}`, or a readable stand-in for a non-JSON error."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        field = body.get("field") if isinstance(body.get("field"), str) else None
        msg = body["error"]
        if field and field not in msg:
            msg = f"{field}: {msg}"
        return msg, field
    if isinstance(body, dict) and "detail" in body:  # FastAPI's default error shape
        return f"HTTP {resp.status_code}: {body['detail']}", None
    text = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else resp.reason_phrase
    return f"HTTP {resp.status_code}: {text}", None
