"""The API's list cache: objects kept encoded as compact JSON between lists.

A list of 100k nodes spends most of its time encoding, and in a live fleet every
report changes a node's `status.lastSeen`. `ListCache` keeps, per projection (kind
and requested fields), each object's encoded bytes; the objects' change feed
(`Objects.subscribe`) drops an object's bytes the moment it changes, so a list never
serves a stale object, and remembers it as stale so the background refresher
(`keep_encoded`) encodes it again for the projections listed within `KEEP_WARM`
(and the `PINNED` ones, `fedctl get nodes`). It belongs to the API: the fleet core
only announces changes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from cloudcore.fleet.objects import Objects, include_fields, redact
from cloudcore.fleet.projection import PINNED
from cloudcore.fleet.template import as_model

KEEP_WARM = 600.0
"""Seconds after its last list that a projection (say the `get nodes` table) is still
kept encoded in the background; after that its cache is dropped."""

Projection = tuple[str, tuple[str, ...] | None]
MAX_PROJECTIONS = 8
"""Projections kept at most; the oldest one not PINNED is dropped for a new one."""


class ListCache:
    """Encoded objects per projection, fed by the objects' change notifications."""

    def __init__(self, objects: Objects, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`clock` (monotonic seconds) times KEEP_WARM."""
        self.objects = objects
        self.clock = clock
        self._encoded: dict[Projection, dict[Any, bytes]] = {}
        self._listed: dict[Projection, float] = {}
        """When each cached projection was last listed (monotonic): the ones listed
        within KEEP_WARM are re-encoded in the background as objects change."""
        self._stale: dict[str, set[Any]] = {}
        self.versions: Callable[[str, Any], int | None] | None = None
        """On a shard: (kind, key) -> the object's resourceVersion (its KV revision),
        written into `metadata.resourceVersion` of what is encoded (proposal 0008)."""
        objects.subscribe(self.changed)

    # -- reads --------------------------------------------------------------------------

    def encoded(self, kind: str, key: Any, fields: tuple[str, ...] | None = None) -> bytes:
        """The object as compact JSON (optionally only `fields`, dotted API paths);
        cached until the object changes. Secret values are redacted (lists, watches):
        only `get` of one Secret, or a list with `reveal`, shows them."""
        return self.encoded_many(kind, (key,), fields)[0]

    def encoded_many(self, kind: str, keys: Iterable[Any],
                     fields: tuple[str, ...] | None = None) -> list[bytes]:
        """`encoded` for a page of keys, with the lookups done once per page: every
        report changes a node's lastSeen, so in a live fleet most of a 100k-node list
        is encoded afresh, and the per-object overhead is most of the cost."""
        self._listed[(kind, fields)] = self.clock()
        return self._encode_into(self._cache_of(kind, fields), kind, keys, fields)

    def cached(self, kind: str, fields: tuple[str, ...] | None) -> dict[Any, bytes]:
        """The encoded objects of one projection (read only; empty if none)."""
        return self._encoded.get((kind, fields), {})

    def projections(self) -> list[Projection]:
        """The projections cached now."""
        return list(self._encoded)

    def stale_count(self) -> int:
        """Objects changed and not yet encoded again by the refresher."""
        return sum(len(v) for v in self._stale.values())

    # -- the change feed ----------------------------------------------------------------

    def changed(self, kind: str, key: Hashable) -> None:
        """An object was saved or deleted: drop its cached JSON, mark it stale."""
        for (k, _), cache in self._encoded.items():
            if k == kind:
                cache.pop(key, None)
                self._stale.setdefault(kind, set()).add(key)

    # -- the refresher ------------------------------------------------------------------

    def refresh_encoded(self, limit: int) -> int:
        """Re-encode up to `limit` changed objects for every projection listed within
        KEEP_WARM (and the PINNED ones), so the next list finds them cached: in a live
        fleet every report changes a node's lastSeen, and without this each `get nodes`
        would encode all 100k nodes again while the user waits. Other projections not
        listed for KEEP_WARM are dropped (their memory too). Returns how many objects
        it looked at."""
        now = self.clock()
        for proj, at in list(self._listed.items()):
            if now - at > KEEP_WARM and proj not in PINNED:
                del self._listed[proj]
                self._encoded.pop(proj, None)
        done = 0
        for kind, stale in list(self._stale.items()):
            take = [stale.pop() for _ in range(min(limit - done, len(stale)))]
            if not stale:
                del self._stale[kind]
            table = self.objects.table(kind)
            take = [k for k in take if k in table]
            for (k, fields), cache in list(self._encoded.items()):
                if k == kind:
                    self._encode_into(cache, kind, take, fields)
            done += len(take)
            if done >= limit:
                break
        return done

    async def keep_encoded(self, interval: float = 0.5, chunk: int = 2000) -> None:
        """Encode the PINNED views (`fedctl get nodes`) once, then run refresh_encoded,
        a chunk per loop turn, until cancelled."""
        for kind, fields in sorted(PINNED, key=str):
            cache = self._cache_of(kind, fields)
            self._listed[(kind, fields)] = self.clock()
            keys, table = self.objects.sorted_keys(kind), self.objects.table(kind)
            for i in range(0, len(keys), chunk):  # keys may go while this yields
                self._encode_into(cache, kind, [k for k in keys[i:i + chunk] if k in table],
                                  fields)
                await asyncio.sleep(0)
        while True:
            await asyncio.sleep(interval)
            while self.refresh_encoded(chunk):
                await asyncio.sleep(0)

    # -- internals ----------------------------------------------------------------------

    def _cache_of(self, kind: str, fields: tuple[str, ...] | None) -> dict[Any, bytes]:
        cache = self._encoded.get((kind, fields))
        if cache is None:
            if len(self._encoded) >= MAX_PROJECTIONS:  # a few at most; drop the oldest
                oldest = next((p for p in self._encoded if p not in PINNED), None)
                if oldest is not None:
                    del self._encoded[oldest]
                    self._listed.pop(oldest, None)
            cache = self._encoded[(kind, fields)] = {}
        return cache

    def _encode_into(self, cache: dict[Any, bytes], kind: str, keys: Iterable[Any],
                     fields: tuple[str, ...] | None) -> list[bytes]:
        table = self.objects.table(kind)
        secret = kind == "Secret"
        get = cache.get
        out: list[bytes] = []
        for key in keys:
            raw = get(key)
            if raw is None:
                obj = as_model(table[key])  # a compact DaemonPod as its full Pod
                cls = type(obj)  # its serializer gives bytes: no str round-trip
                raw = cls.__pydantic_serializer__.to_json(
                    obj, include=None if fields is None else include_fields(cls, fields),
                    by_alias=True, exclude_none=True)
                if secret:
                    raw = redact(raw)
                if self.versions is not None and (fields is None or any(
                        f.startswith("metadata") for f in fields)):
                    raw = _versioned(raw, self.versions(kind, key))
                cache[key] = raw
            out.append(raw)
        return out


def _versioned(raw: bytes, version: int | None) -> bytes:
    """The encoded object with `metadata.resourceVersion` set (unchanged without one)."""
    if version is None:
        return raw
    doc = json.loads(raw)
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return raw
    meta["resourceVersion"] = str(version)
    return json.dumps(doc, separators=(",", ":")).encode()
