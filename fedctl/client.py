"""The HTTP client of cloudcore's API: the only module of fedctl that imports httpx.

Every transport failure becomes `Unreachable` and every HTTP error becomes a
`ServerError` (or `NotFound`) carrying the server's message and field, so the
commands above never see an httpx exception. Tests inject an
`httpx.MockTransport` or point the client at a stub server.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from fedctl.config import Settings
from fedctl.errors import NotFound, ServerError, Unreachable
from fedctl.kinds import Kind

API = "/api/v1"


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
        self._http = httpx.Client(
            base_url=settings.server,
            timeout=settings.timeout,
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "fedctl"},
            # FEDCTL_SERVER is explicit; a stray HTTP(S)_PROXY must not reroute it.
            trust_env=False,
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
        """Create or update the documents; one result per document, in order."""
        body = self._request(
            "POST", f"{API}/apply", json={"documents": documents, "dryRun": dry_run}
        )
        results = body.get("results")
        if not isinstance(results, list):
            raise ServerError("cloudcore answered apply without a 'results' list", status=200)
        return results

    def list(
        self,
        kind: Kind,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        node: str | None = None,
    ) -> list[dict[str, Any]]:
        """Objects of a kind; `namespace=None` means all namespaces."""
        params: dict[str, str] = {}
        if namespace is not None and kind.namespaced:
            params["namespace"] = namespace
        if selector:
            params["labelSelector"] = selector
        if node:
            params["node"] = node
        body = self._request("GET", f"{API}/{kind.plural}", params=params)
        items = body.get("items")
        if not isinstance(items, list):
            raise ServerError(f"cloudcore answered GET {kind.plural} without 'items'", status=200)
        return items

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
        try:
            resp = self._http.request(method, url, params=params, json=json)
        except httpx.TimeoutException as exc:
            raise Unreachable(
                f"cannot reach cloudcore at {self.server}: timed out ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise Unreachable(f"cannot reach cloudcore at {self.server}: {reason}") from exc
        return self._decode(resp, what=what)

    def _decode(self, resp: httpx.Response, *, what: str | None) -> dict[str, Any]:
        try:
            body: Any = resp.json() if resp.content else {}
        except ValueError:
            body = None
        if resp.status_code >= 400:
            msg, field = _error_of(body, resp)
            if resp.status_code == 404:
                raise NotFound(f"{what} not found" if what else msg, status=404, field=field)
            raise ServerError(msg, status=resp.status_code, field=field)
        if not isinstance(body, dict):
            raise ServerError(
                f"cloudcore answered {resp.request.method} {resp.request.url.path} "
                f"with something that is not a JSON object (HTTP {resp.status_code})",
                status=resp.status_code,
            )
        return body


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
