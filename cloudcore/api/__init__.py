"""The HTTP API (FastAPI): apply, get, list, delete, health and metrics.

`create_app(fleet, ...)` builds the app from explicit collaborators, so tests drive
it in-process through httpx's ASGITransport and the service runs it on uvicorn.
"""

from cloudcore.api.app import create_app

__all__ = ["create_app"]
