"""An in-process API over a real LMDB store, with auth configurable (shared by tests).

Plain mode: the app is driven through httpx's ASGITransport, so there is no TLS and,
unless `auth_on`, no token (the product's defaults are the opposite; the service
tests in test_api.py cover HTTPS and auth as shipped). A fleet CA is made in tmp_path
unless `ca=False`, so join tokens are pinned and join answers carry it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from cloudcore.api import create_app
from cloudcore.auth import Auth
from cloudcore.auth.pki import FleetCA
from cloudcore.config import ApiSettings, AuthSettings, StoreSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store


@dataclass
class Api:
    client: httpx.AsyncClient
    fleet: Fleet
    store: Store
    auth: Auth
    ca: FleetCA | None
    metrics: Metrics


@contextlib.asynccontextmanager
async def open_api(tmp_path: Path, *, auth_on: bool = False, clock: object = None,
                   ca: bool = True, auth_settings: AuthSettings | None = None,
                   api_settings: ApiSettings | None = None,
                   release_keys: tuple[str, ...] = ()) -> AsyncIterator[Api]:
    async with Store(StoreSettings(state_dir=tmp_path / "s", batch_interval=0.005)) as store:
        writer = asyncio.create_task(store.run(), name="test.writer")
        fleet = Fleet(store=store, scheduler=Scheduler(),
                      liveness=Liveness(default_heartbeat=30, missed=3, now=0))
        records = store.load()
        fleet.load(records)
        kw = {"clock": clock} if clock is not None else {}
        auth = Auth(store=store, enabled=auth_on, **kw)  # type: ignore[arg-type]
        auth.load(records)
        fleet_ca = FleetCA.open(tmp_path / "pki") if ca else None
        metrics = Metrics()
        app = create_app(fleet, metrics=metrics, flush=store.flush, auth=auth,
                         broker=("broker.example", 8883, True), ca=fleet_ca,
                         auth_settings=auth_settings, settings=api_settings,
                         release_keys=release_keys)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield Api(client, fleet, store, auth, fleet_ca, metrics)
        finally:
            fleet.watches.close()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
