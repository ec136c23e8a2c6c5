"""LMDB-backed cache: desired set, pod records, report outbox, counters.

Named databases of the one environment (`state_dir/cache`):

- `desired`: `@epoch`, `@gen`, `@left` (epochs left, shared.delta.EdgeDesired.left)
  and one `k/{key}` entry per desired item. A new
  set replaces the old one in ONE write transaction, committed with fsync, so
  after kill -9 or power loss we hold either the old or the new set, never a mix.
  That is what makes an Ack("I applied gen N") true.
- `pods`: `r/{pod key}`: the reconciler's record (restart counts, backoff);
  `s/{pod key}`: the last status we put in a report; `a/{pod key}`: the pod's
  exclusive device allocations. Separate keys so the reconciler and the
  reporter never overwrite each other's half.
- `outbox`: reports waiting for a ReportAck, keyed by seq as 8-byte big-endian
  (so LMDB's byte order is seq order); value = one kind byte + encoded report.
- `meta`: `seq`, the last report seq ever assigned; only grows.

Every commit is synced (LMDB's default), because the seq counter and the acked
desired gen must never go backwards after a power cut; the agent keeps the commit
rate low (reports are batched) instead of weakening durability.

All methods are synchronous and short; the agent runs the ones on its message
path in a worker thread (`asyncio.to_thread`). py-lmdb releases the GIL during
I/O and uses MDB_NOTLS, so calls from different threads are safe; LMDB itself
serialises writers.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from edgecore.errors import CacheError
from shared.delta import EdgeDesired

log = logging.getLogger(__name__)

_EPOCH = b"@epoch"
_GEN = b"@gen"
_LEFT = b"@left"  # epochs the edge left (replayed snapshots under them are refused)
_ITEM = b"k/"
_REC = b"r/"
_STATUS = b"s/"
_ALLOC = b"a/"
_SEQ = b"seq"
_METRICS_SEQ = b"@mseq"  # seq of the one metrics report the outbox may hold (see append_report)
# When over budget, evict down to this fraction so eviction scans are amortised.
_LOW_WATER = 0.9


class OutboxKind(enum.Enum):
    """How precious an outbox entry is when the byte budget forces a drop."""

    STATUS = b"s"  # pod / node status changes: kept as long as possible
    TELEMETRY = b"t"  # samples and heartbeats: dropped first


@dataclass(frozen=True)
class AppendResult:
    seq: int
    dropped_telemetry: int = 0
    dropped_status: int = 0  # >0 means the cloud missed status changes: resend all
    superseded_metrics: int = 0  # an unsent metrics batch this one replaced


def _be(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _pack(v: Any) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


def _unpack(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False, strict_map_key=False)


def check_entry(db: bytes, key: bytes, value: bytes) -> None:
    """Raises if an entry of database `db` is not what this module writes there
    (`edgecore.cache.check` reads a whole suspicious file with it, in a child)."""
    if (db, key) in ((b"desired", _GEN), (b"meta", _SEQ)):
        if len(value) != 8:
            raise ValueError(f"{db.decode()} {key.decode()}: not an 8-byte counter")
    elif db == b"outbox":
        if len(key) != 8 or value[:1] not in {k.value for k in OutboxKind}:
            raise ValueError("an outbox entry is malformed")
        _unpack(value[1:])
    else:
        _unpack(value)


class Cache:
    """One open LMDB environment. Use as a context manager or call `close()`."""

    def __init__(self, path: Path, *, map_bytes: int = 1 << 30, outbox_budget: int = 64 << 20):
        self.path = Path(path)
        self.outbox_budget = outbox_budget
        self._lock = threading.Lock()  # guards _outbox_bytes (writers may be in threads)
        self._cond = threading.Condition()  # guards _active / _closed
        self._active = 0
        self._closed = False
        try:
            # Secrets and every pod spec live here: no local user but root may read it
            # (0700 directory, 0600 files, also fixed on a cache an older agent made).
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.chmod(0o700)
            for f in ("data.mdb", "lock.mdb"):
                with contextlib.suppress(FileNotFoundError):
                    (self.path / f).chmod(0o600)
            self._env = lmdb.open(
                str(self.path), map_size=map_bytes, max_dbs=8, subdir=True,
                sync=True, metasync=True, readahead=False, mode=0o600,
            )
            self._desired = self._env.open_db(b"desired")
            self._pods = self._env.open_db(b"pods")
            self._outbox = self._env.open_db(b"outbox")
            self._meta = self._env.open_db(b"meta")
            with self._env.begin(db=self._outbox) as txn:
                self._outbox_bytes = sum(len(v) for _, v in txn.cursor())
        except (lmdb.Error, OSError) as exc:
            raise CacheError(f"cannot open cache at {self.path}: {exc}") from exc

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout_s: float = 30.0) -> None:
        """Close the environment once no call (possibly in a worker thread) is inside it.

        A task awaiting `asyncio.to_thread(cache...)` can be cancelled while its thread
        is still committing; closing under it would pull the map out from under C code.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._active == 0, timeout=timeout_s)
            if not self._closed:
                self._closed = True
                self._env.close()

    @contextmanager
    def _txn(self, *, write: bool = False) -> Iterator[lmdb.Transaction]:
        """A transaction with lmdb errors wrapped; commits on success, aborts on error."""
        with self._cond:
            if self._closed:
                raise CacheError("cache is closed")
            self._active += 1
        try:
            with self._env.begin(write=write) as txn:
                yield txn
        except lmdb.Error as exc:
            raise CacheError(f"cache {'write' if write else 'read'} failed: {exc}") from exc
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    # -- desired -------------------------------------------------------------------

    def get_desired(self) -> EdgeDesired:
        with self._txn() as txn:
            raw_epoch = txn.get(_EPOCH, db=self._desired)
            raw_gen = txn.get(_GEN, db=self._desired)
            raw_left = txn.get(_LEFT, db=self._desired)
            items: dict[str, Any] = {}
            cur = txn.cursor(db=self._desired)
            if cur.set_range(_ITEM):
                for k, v in cur:
                    if not k.startswith(_ITEM):
                        break
                    items[k[len(_ITEM):].decode()] = _unpack(v)
        return EdgeDesired(
            epoch=None if raw_epoch is None else _unpack(raw_epoch),
            gen=0 if raw_gen is None else int.from_bytes(raw_gen, "big"),
            items=items,
            left=() if raw_left is None else tuple(_unpack(raw_left)),
        )

    def put_desired(self, desired: EdgeDesired) -> None:
        """Replace the desired set, epoch and gen atomically and durably (fsync on commit)."""
        with self._txn(write=True) as txn:
            cur = txn.cursor(db=self._desired)
            if cur.set_range(_ITEM):
                while cur.key().startswith(_ITEM):
                    if not cur.delete():
                        break
            for k, v in desired.items.items():
                txn.put(_ITEM + k.encode(), _pack(v), db=self._desired)
            txn.put(_EPOCH, _pack(desired.epoch), db=self._desired)
            txn.put(_GEN, _be(desired.gen), db=self._desired)
            txn.put(_LEFT, _pack(list(desired.left)), db=self._desired)

    # -- pod records -----------------------------------------------------------------

    def pod_records(self) -> dict[str, dict[str, Any]]:
        """The reconciler's record of every pod it has touched."""
        return self._prefixed(_REC)

    def put_pod_record(self, key: str, record: Mapping[str, Any]) -> None:
        with self._txn(write=True) as txn:
            txn.put(_REC + key.encode(), _pack(dict(record)), db=self._pods)

    def delete_pod_record(self, key: str) -> None:
        with self._txn(write=True) as txn:
            txn.delete(_REC + key.encode(), db=self._pods)

    def pod_allocations(self) -> dict[str, dict[str, Any]]:
        """Device allocations by pod key: {container: {resource: [device ids]}}."""
        return self._prefixed(_ALLOC)

    def put_pod_allocation(self, key: str, value: Mapping[str, Any] | None) -> None:
        """Store (or, with None, delete) the device allocations of one pod."""
        with self._txn(write=True) as txn:
            if value is None:
                txn.delete(_ALLOC + key.encode(), db=self._pods)
            else:
                txn.put(_ALLOC + key.encode(), _pack(dict(value)), db=self._pods)

    def reported_statuses(self) -> dict[str, dict[str, Any]]:
        """The last status value reported for each pod (what the cloud has been told)."""
        return self._prefixed(_STATUS)

    def _prefixed(self, prefix: bytes) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self._txn() as txn:
            cur = txn.cursor(db=self._pods)
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    out[k[len(prefix):].decode()] = _unpack(v)
        return out

    # -- outbox ------------------------------------------------------------------------

    def last_seq(self) -> int:
        with self._txn() as txn:
            raw = txn.get(_SEQ, db=self._meta)
        return 0 if raw is None else int.from_bytes(raw, "big")

    @property
    def outbox_bytes(self) -> int:
        return self._outbox_bytes

    def append_report(
        self,
        make: Callable[[int], bytes],
        *,
        kind: OutboxKind,
        reported: Mapping[str, dict[str, Any] | None] | None = None,
        metrics: bool = False,
    ) -> AppendResult:
        """Assign the next seq, store `make(seq)` in the outbox, all in ONE synced txn.

        `reported` records the pod statuses this report carries (None: pod gone), so
        "what the cloud was told" moves exactly with the report that tells it.
        `metrics`: the report is a batch of scraped samples (issue 17), of which the
        cloud keeps only the latest: it replaces the previous one if that still waits
        (so the outbox holds at most one, however long the link is down), and it is
        the first thing the byte budget drops. It is stored as TELEMETRY (an older
        agent reads the outbox as it always did); `@mseq` in meta says which seq it is.
        Returns the seq and what the byte budget forced out.
        """
        with self._txn(write=True) as txn, self._lock:
            raw = txn.get(_SEQ, db=self._meta)
            seq = (0 if raw is None else int.from_bytes(raw, "big")) + 1
            payload = make(seq)
            value = kind.value + payload
            txn.put(_SEQ, _be(seq), db=self._meta)
            txn.put(_be(seq), value, db=self._outbox)
            superseded = freed = 0
            if metrics:
                prev = txn.get(_METRICS_SEQ, db=self._meta)
                if prev is not None:
                    old = txn.pop(_be(_unpack(prev)), db=self._outbox)
                    if old is not None:
                        freed, superseded = len(old), 1
                txn.put(_METRICS_SEQ, _pack(seq), db=self._meta)
            for key, status in (reported or {}).items():
                if status is None:
                    txn.delete(_STATUS + key.encode(), db=self._pods)
                else:
                    txn.put(_STATUS + key.encode(), _pack(status), db=self._pods)
            total = self._outbox_bytes - freed + len(value)
            dropped_t = dropped_s = 0
            if total > self.outbox_budget:
                total, dropped_t, dropped_s = self._evict(txn, total, newest=seq)
            self._outbox_bytes = total
        if dropped_t or dropped_s:
            log.warning(
                "outbox over its budget of %d bytes: dropped %d telemetry and %d status reports",
                self.outbox_budget, dropped_t, dropped_s,
            )
        return AppendResult(seq=seq, dropped_telemetry=dropped_t, dropped_status=dropped_s,
                            superseded_metrics=superseded)

    def _evict(self, txn: lmdb.Transaction, total: int, *, newest: int) -> tuple[int, int, int]:
        """Drop the metrics batch, then oldest telemetry, then oldest status reports
        (never `newest`), to low water."""
        target = int(self.outbox_budget * _LOW_WATER)
        raw = txn.get(_METRICS_SEQ, db=self._meta)
        metrics_key = None if raw is None else _be(_unpack(raw))
        first: list[tuple[bytes, int]] = []
        telemetry: list[tuple[bytes, int]] = []
        status: list[tuple[bytes, int]] = []
        for k, v in txn.cursor(db=self._outbox):
            if int.from_bytes(k, "big") == newest:
                continue
            if k == metrics_key:
                first.append((k, len(v)))
            else:
                (telemetry if v[:1] == OutboxKind.TELEMETRY.value else status).append(
                    (k, len(v)))
        dropped = [0, 0]
        for i, group in ((0, first), (0, telemetry), (1, status)):
            for k, size in group:
                if total <= target:
                    break
                txn.delete(k, db=self._outbox)
                total -= size
                dropped[i] += 1
        return total, dropped[0], dropped[1]

    def outbox(self, *, after: int = 0) -> list[tuple[int, bytes]]:
        """Unacknowledged reports with seq > `after`, in seq order: (seq, encoded report)."""
        out: list[tuple[int, bytes]] = []
        with self._txn() as txn:
            cur = txn.cursor(db=self._outbox)
            if cur.set_range(_be(after + 1)):
                out.extend((int.from_bytes(k, "big"), bytes(v[1:])) for k, v in cur)
        return out

    def ack_reports(self, seq: int) -> int:
        """Drop every outbox entry with seq <= `seq`; returns how many were dropped."""
        n = 0
        with self._txn(write=True) as txn, self._lock:
            cur = txn.cursor(db=self._outbox)
            freed = 0
            if cur.first():
                while cur.key() and int.from_bytes(cur.key(), "big") <= seq:
                    freed += len(cur.value())
                    n += 1
                    if not cur.delete():
                        break
            self._outbox_bytes -= freed
        return n
