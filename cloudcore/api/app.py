"""Routes of the cloudcore API and the mapping of errors to JSON responses.

Every error is `{"error": message, "field": name-or-null}` with a 4xx status; a
bug becomes a 500 with the same shape, never a traceback in the body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloudcore.api.selectors import parse_selector
from cloudcore.errors import NotFound
from cloudcore.fleet import Fleet
from cloudcore.metrics import Metrics
from shared.errors import ObjectError
from shared.models import parse_object

log = logging.getLogger("cloudcore.api")

PLURALS = {"nodes": "Node", "pods": "Pod", "daemonsets": "DaemonSet",
           "deployments": "Deployment", "configmaps": "ConfigMap"}
MAX_DOCUMENTS = 1000


class ApplyBody(BaseModel):
    documents: list[Any] = Field(max_length=MAX_DOCUMENTS)
    dryRun: bool = False


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


def create_app(fleet: Fleet, *, metrics: Metrics,
               flush: Callable[[], Awaitable[None]],
               ready: Callable[[], bool] = lambda: True) -> FastAPI:
    """The API over `fleet`. `flush` makes writes durable before a write returns."""
    app = FastAPI(title="edgefed cloudcore", version="0.1.0")

    @app.exception_handler(ObjectError)
    async def _object_error(_: Request, exc: ObjectError) -> JSONResponse:
        return _error(422, exc.message, exc.field)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in err["loc"] if p != "body") or None
        return _error(422, f"{field}: {err['msg']}" if field else err["msg"], field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, f"internal error: {type(exc).__name__}")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if ready():
            return JSONResponse({"status": "ready"})
        return _error(503, "not ready: store or broker not connected yet")

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/api/v1/apply")
    async def apply(body: ApplyBody) -> dict[str, Any]:
        objs = []
        for i, doc in enumerate(body.documents):
            try:
                objs.append(parse_object(doc))
            except ObjectError as exc:
                raise type(exc)(f"documents[{i}]: {exc.message}", field=exc.field) from None
        if body.dryRun:
            results = fleet.plan(objs)
        else:
            results = fleet.apply(objs)
            await flush()
        return {"results": [r.dump() for r in results], "dryRun": body.dryRun}

    def _kind(plural: str) -> str:
        kind = PLURALS.get(plural)
        if kind is None:
            raise NotFound("resource type", plural)
        return kind

    @app.get("/api/v1/{plural}")
    async def list_objects(plural: str, namespace: str | None = None,
                           labelSelector: str | None = None,
                           node: str | None = None) -> dict[str, Any]:
        kind = _kind(plural)
        selector = parse_selector(labelSelector) if labelSelector else None
        return {"items": fleet.list(kind, namespace=namespace, selector=selector, node=node)}

    @app.get("/api/v1/nodes/{name}")
    async def get_node(name: str) -> dict[str, Any]:
        return fleet.get("Node", None, name)

    @app.delete("/api/v1/nodes/{name}")
    async def delete_node(name: str) -> dict[str, Any]:
        deleted = fleet.delete("Node", None, name)
        await flush()
        return {"deleted": deleted}

    @app.get("/api/v1/{plural}/{namespace}/{name}")
    async def get_object(plural: str, namespace: str, name: str) -> dict[str, Any]:
        return fleet.get(_kind(plural), namespace, name)

    @app.delete("/api/v1/{plural}/{namespace}/{name}")
    async def delete_object(plural: str, namespace: str, name: str) -> dict[str, Any]:
        deleted = fleet.delete(_kind(plural), namespace, name)
        await flush()
        return {"deleted": deleted}

    return app
