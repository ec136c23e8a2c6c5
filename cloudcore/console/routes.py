"""Routes of the console: the static files, the `/` redirect and the overview summary.

The static files are read once from the package (importlib.resources) and served
from memory with a strict Content-Security-Policy: scripts and styles from this
origin only, no inline script or style, no plugin, no framing, fetches to this origin
only. The page builds every element with the DOM API and sets text with
`textContent`, so what a node reports (labels, messages) is shown as text, never
parsed as HTML; the CSP is the second wall.

`GET /console/api/overview` (read-only role) answers what the fleet overview needs
from the whole fleet in one small body: node counts by state, by site (label
`edgefed.io/site`, `site` or `topology.kubernetes.io/zone`) and arch (top values), how
many nodes have not acked their desired gen, and the first `troubled` nodes
(NotReady, Unknown, or behind on gens), worst first. It walks the node table once per
call and keeps the answer for `OVERVIEW_TTL` seconds per filter, so a console left
open costs one walk every few seconds whatever the number of tabs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import RedirectResponse, Response

from cloudcore.api.selectors import parse_selector
from cloudcore.auth import Auth, Principal, Role
from cloudcore.fleet import Fleet

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
           "Cache-Control": "no-cache"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
OVERVIEW_TTL = 3.0  # seconds an overview answer is reused
TROUBLED_MAX = 200
STATE_RANK = {"NotReady": 0, "Unknown": 1, "Ready": 2}
SITE_LABELS = ("edgefed.io/site", "site", "topology.kubernetes.io/zone")
TOP_VALUES = 20


def _static_files() -> dict[str, tuple[bytes, str]]:
    root = resources.files("cloudcore.console") / "static"
    out = {}
    for item in root.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in TYPES:
            out[item.name] = (item.read_bytes(), TYPES[suffix])
    return out


def console_router(fleet: Fleet, *, access: Auth,
                   clock: Callable[[], float] = time.monotonic) -> APIRouter:
    """The console's routes over `fleet`, with `access` checking the overview's token."""
    files = _static_files()
    router = APIRouter(include_in_schema=False)
    cache: dict[str, tuple[float, dict[str, Any]]] = {}

    def reader(authorization: Annotated[str | None, Header()] = None) -> Principal:
        who = access.authenticate(authorization)
        access.require(who, Role.READ_ONLY, "reading")
        return who

    def _file(name: str) -> Response:
        body, media = files[name]
        return Response(body, media_type=media, headers=HEADERS)

    @router.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    @router.get("/console")
    async def console_bare() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    @router.get("/console/")
    async def index() -> Response:
        return _file("index.html")

    @router.get("/console/static/{name}")
    async def static(name: str) -> Response:
        if name not in files or name == "index.html":
            return Response(b'{"error":"no such file","field":null}', status_code=404,
                            media_type="application/json", headers=HEADERS)
        return _file(name)

    @router.get("/console/api/overview", tags=["console"])
    async def overview(labelSelector: str | None = None,
                       troubled: Annotated[int, Query(ge=0, le=TROUBLED_MAX)] = 20,
                       _: Principal = Depends(reader)) -> dict[str, Any]:
        key = f"{labelSelector or ''}|{troubled}"
        now = clock()
        hit = cache.get(key)
        if hit is not None and now - hit[0] < OVERVIEW_TTL:
            return hit[1]
        selector = parse_selector(labelSelector) if labelSelector else None
        body = summarize(fleet, selector=selector, troubled=troubled)
        if len(cache) > 64:
            cache.clear()
        cache[key] = (now, body)
        return body

    return router


def summarize(fleet: Fleet, *, selector: Callable[[dict[str, str]], bool] | None,
              troubled: int) -> dict[str, Any]:
    """Counts by state and group label, the number of nodes behind on gens, and the
    `troubled` worst nodes (NotReady first, then Unknown, then behind; longest silent
    first), as `{name, ready, reason, lastSeen, desiredGen, ackedGen, labels}`."""
    states: Counter[str] = Counter()
    sites: Counter[str] = Counter()
    arches: Counter[str] = Counter()
    behind = 0
    bad: list[tuple[int, float, str, Any]] = []
    for name, node in fleet.nodes.items():
        labels = node.metadata.labels
        if selector is not None and not selector(labels):
            continue
        st = node.status
        states[st.ready] += 1
        arches[st.arch] += 1
        site = next((labels[k] for k in SITE_LABELS if k in labels), None)
        if site is not None:
            sites[site] += 1
        lagging = st.acked_gen < st.desired_gen
        behind += lagging
        if st.ready != "Ready" or lagging:
            bad.append((STATE_RANK.get(st.ready, 1), st.last_seen or 0.0, name, node))
    bad.sort(key=lambda t: (t[0], t[1], t[2]))
    return {
        "total": sum(states.values()),
        "states": {s: states.get(s, 0) for s in ("Ready", "NotReady", "Unknown")},
        "behind": behind,
        "troubledTotal": len(bad),
        "groups": {"site": dict(sites.most_common(TOP_VALUES)),
                   "arch": dict(arches.most_common(TOP_VALUES))},
        "troubled": [{"name": n, "ready": node.status.ready, "reason": node.status.reason,
                      "lastSeen": node.status.last_seen,
                      "desiredGen": node.status.desired_gen,
                      "ackedGen": node.status.acked_gen,
                      "labels": dict(node.metadata.labels)}
                     for _, _, n, node in bad[:troubled]],
        "at": time.time(),
    }
