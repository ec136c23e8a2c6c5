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
call and keeps the answer for `OVERVIEW_TTL` seconds per filter (callers during a walk
share it), so open consoles cost at most one walk every 10 s per filter, however many
tabs. `GET /console/api/nodes/{name}/telemetry` (read-only) serves a node's recent
one-minute telemetry points and its forecast, for the node page's plot.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import RedirectResponse, Response

from cloudcore.api.selectors import parse_selector
from cloudcore.auth import Auth, Principal, Role
from cloudcore.errors import NotFound
from cloudcore.fleet import Fleet
from cloudcore.fleet.forecast import forecast_of, normalise

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
           "Cache-Control": "no-cache"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
OVERVIEW_TTL = 10.0  # seconds an overview answer is reused (the page asks every 15 s)
TROUBLED_MAX = 200
CHUNK = 2000  # nodes walked between two yields to the event loop
STATE_RANK = {"NotReady": 0, "Unknown": 1, "Ready": 2}
SITE_LABELS = ("edgefed.io/site", "site", "topology.kubernetes.io/zone")
TOP_VALUES = 20
HORIZON = 15 * 60  # seconds the forecast covers (DESIGN.md section 6)


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
    cache: dict[str, tuple[float, asyncio.Future[dict[str, Any]]]] = {}

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
        if hit is None or now - hit[0] >= OVERVIEW_TTL:
            selector = parse_selector(labelSelector) if labelSelector else None
            # one walk per key at a time: callers that come while it runs share it
            walk = asyncio.ensure_future(summarize(fleet, selector=selector,
                                                   troubled=troubled))
            walk.add_done_callback(lambda f, k=key: _forget_failed(cache, k, f))
            if len(cache) > 64:
                cache.clear()
            hit = cache[key] = (now, walk)
        return await asyncio.shield(hit[1])

    @router.get("/console/api/nodes/{name}/telemetry", tags=["console"])
    async def telemetry(name: str, _: Principal = Depends(reader)) -> dict[str, Any]:
        node = fleet.nodes.get(name)
        if node is None:
            raise NotFound("node", name)
        return node_telemetry(node, fleet.telemetry.get(name, []))

    return router


def node_telemetry(node: Any, samples: list[Any]) -> dict[str, Any]:
    """What a node page plots: the node's recent one-minute points as the fleet keeps
    them (`[minute start, cpu, mem]`, 0..1 of allocatable, oldest first, at most one a
    minute) and its forecast (`cpu_p50`, `cpu_p90`, `mem_p50`, `mem_p90`: the peak over
    the next `horizonSeconds`, `trusted`), or null without one."""
    by_minute: dict[int, tuple[float, float]] = {}
    for entry in samples:
        point = normalise(entry, node.status.allocatable)
        if point is not None:
            by_minute[point[0]] = (point[1], point[2])
    return {"points": [[m * 60, cpu, mem] for m, (cpu, mem) in sorted(by_minute.items())],
            "forecast": forecast_of(node.status.usage),
            "horizonSeconds": HORIZON}


async def summarize(fleet: Fleet, *, selector: Callable[[dict[str, str]], bool] | None,
                    troubled: int, chunk: int = CHUNK) -> dict[str, Any]:
    """Counts by state, site and arch, the number of nodes behind on gens, and the
    `troubled` worst nodes (NotReady first, then Unknown, then behind; longest silent
    first), as `{name, ready, reason, lastSeen, desiredGen, ackedGen, labels}`. Walks
    the nodes `chunk` at a time and lets the event loop run between chunks (at 100,000
    nodes a walk is ~0.1-0.2 s of CPU; no piece of it holds the loop past ~10 ms).
    Nodes that come or go during the walk are counted or not, as they fall."""
    states = {"Ready": 0, "NotReady": 0, "Unknown": 0}
    sites: dict[str, int] = {}
    arches: dict[str, int] = {}
    behind = 0
    bad: list[tuple[int, float, str]] = []
    names = list(fleet.nodes)
    nodes = fleet.nodes
    for start in range(0, len(names), chunk):
        if start:
            await asyncio.sleep(0)
        for name in names[start:start + chunk]:
            node = nodes.get(name)
            if node is None:
                continue
            labels = node.metadata.labels
            if selector is not None and not selector(labels):
                continue
            st = node.status
            ready = st.ready
            states[ready] = states.get(ready, 0) + 1
            arches[st.arch] = arches.get(st.arch, 0) + 1
            for k in SITE_LABELS:
                site = labels.get(k)
                if site is not None:
                    sites[site] = sites.get(site, 0) + 1
                    break
            lagging = st.acked_gen < st.desired_gen
            if lagging:
                behind += 1
            if lagging or ready != "Ready":
                bad.append((STATE_RANK.get(ready, 1), st.last_seen or 0.0, name))
    worst = []
    for _, _, name in heapq.nsmallest(troubled, bad):
        node = nodes.get(name)
        if node is not None:
            st = node.status
            worst.append({"name": name, "ready": st.ready, "reason": st.reason,
                          "lastSeen": st.last_seen, "desiredGen": st.desired_gen,
                          "ackedGen": st.acked_gen, "labels": dict(node.metadata.labels)})
    return {
        "total": sum(states.values()),
        "states": states,
        "behind": behind,
        "troubledTotal": len(bad),
        "groups": {"site": _top(sites), "arch": _top(arches)},
        "troubled": worst,
        "at": time.time(),
    }


def _forget_failed(cache: dict[str, Any], key: str, walk: asyncio.Future[Any]) -> None:
    if (walk.cancelled() or walk.exception() is not None) and cache.get(key, (0, None))[1] is walk:
        del cache[key]


def _top(counts: dict[str, int]) -> dict[str, int]:
    return dict(heapq.nlargest(TOP_VALUES, counts.items(), key=lambda kv: (kv[1], kv[0])))
