"""LMDB-backed, batched, write-behind store (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from cloudcore.config import StoreSettings
from cloudcore.errors import StoreError
from cloudcore.store.encryption import KEY_FILE, KeyRing, is_encrypted, key_name, should_encrypt
from shared.delta import new_epoch

log = logging.getLogger("cloudcore.store")

DBS = ("nodes", "daemonsets", "deployments", "pods", "configmaps", "desired", "reportseq",
       "meta", "tokens", "credentials", "secrets", "namespaces", "deletednodes", "rollouts",
       "agentupgrades", "upgradenodes", "priorityclasses", "acked", "parts")
"""Named databases: one per object kind, plus per-node desired sets (NodeDesired
records), per-node acked gens written at acks ([epoch, gen]: an ack need not rewrite
the whole set), per-node last processed report seq, meta (the store epoch), join and API
tokens (hashed), per-node broker credentials (hashed) and the names of deleted nodes
(whose agents must not re-register them until they join again), AgentUpgrade objects
and their per-node memory (`upgradenodes`: `upgrade/node` -> what the node ran before,
whether it failed), and `parts`: values many records share, stored once under a hash
of their content (a DaemonSet's pod template, the template part of its pods' desired
entries; `cloudcore.fleet.objects.Parts`), which those records name instead."""
_MAX_DBS = 32  # room for new named databases without reopening old environments
DIR_MODE = 0o700
FILE_MODE = 0o600
"""The state directory and the LMDB files: readable by cloudcore's user only (they hold
Secrets, encrypted, and token hashes)."""

_DELETE = object()
_Op = tuple[str, bytes, bytes | None]


class Store:
    """Batched LMDB store. Use as `async with Store(settings) as store:` and run `run()`.

    Records holding Secret values are encrypted with the keys of
    `settings.encryption_key_file` (default `<state_dir>/encryption.keys`, created on
    first open; see `encryption.py`)."""

    def __init__(self, settings: StoreSettings) -> None:
        self._settings = settings
        self._keys: KeyRing | None = None
        self._env: lmdb.Environment | None = None
        self._dbs: dict[str, Any] = {}
        self._epoch = ""
        self._pending: dict[tuple[str, str], Any] = {}
        self._batch: asyncio.Future[None] | None = None
        self._have = asyncio.Event()
        self._kick = asyncio.Event()
        self._lock = threading.Lock()  # one writer thread at a time, and not during close
        self._writing: asyncio.Future[None] | None = None
        self._writing_batch: asyncio.Future[None] | None = None
        self.commits = 0
        self.ops_written = 0

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Store:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def open(self) -> None:
        """Open (creating if needed) the environment and the store epoch."""
        path = Path(self._settings.state_dir)
        try:
            _private_dir(path)
            self._keys = KeyRing.open(path, self._settings.encryption_key_file)
            self._env = lmdb.open(str(path), map_size=self._settings.map_size,
                                  max_dbs=_MAX_DBS, subdir=True, lock=True, mode=FILE_MODE)
            _private_files(path)
            for name in DBS:
                self._dbs[name] = self._env.open_db(name.encode())
            with self._env.begin(write=True) as txn:
                raw = txn.get(b"epoch", db=self._dbs["meta"])
                if raw is None:
                    self._epoch = new_epoch()
                    txn.put(b"epoch", msgpack.packb(self._epoch), db=self._dbs["meta"])
                    log.info("new store epoch %s in %s", self._epoch, path)
                else:
                    self._epoch = msgpack.unpackb(raw)
        except (lmdb.Error, OSError) as exc:
            raise StoreError(f"cannot open store at {path}: {exc}") from exc

    async def aclose(self) -> None:
        """Finish the write in flight, commit what is still pending, close the env."""
        if self._env is None:
            return
        if self._writing is not None and not self._writing.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._writing)
        self._settle(self._writing_batch, self._writing)
        ops, batch = self._take()
        try:
            if ops:
                self._write(ops)
            if batch is not None and not batch.done():
                batch.set_result(None)
        except StoreError as exc:
            if batch is not None and not batch.done():
                batch.set_exception(exc)
            log.error("final commit failed: %s", exc)
        finally:
            with self._lock:
                self._env.close()
                self._env = None

    @property
    def epoch(self) -> str:
        """Random id of this store's incarnation; created once, survives restarts."""
        return self._epoch

    # -- reads ---------------------------------------------------------------------

    def load(self) -> dict[str, dict[str, Any]]:
        """Every record of every database: {db: {key: value}}. Records that hold
        Secret values but were written unencrypted (before encryption at rest) are
        rewritten encrypted."""
        if self._env is None or self._keys is None:
            raise StoreError("store is not open")
        out: dict[str, dict[str, Any]] = {}
        plain: list[_Op] = []
        try:
            with self._env.begin() as txn:
                for name in DBS:
                    records = out[name] = {}
                    for k, raw in txn.cursor(db=self._dbs[name]):
                        v = raw
                        if is_encrypted(raw):
                            v = self._keys.decrypt(name, k, raw)
                        elif should_encrypt(name, raw):
                            plain.append((name, k, self._keys.encrypt(name, k, raw)))
                        records[k.decode()] = msgpack.unpackb(v, raw=False,
                                                              strict_map_key=False)
        except (lmdb.Error, ValueError) as exc:
            raise StoreError(f"cannot load the store: {exc}") from exc
        if plain:
            self._write(plain)
            log.warning("encrypted %d store records that held Secret values in plain "
                        "text; old copies may remain in free pages of data.mdb until "
                        "`cloudcore backup` makes a compacted copy", len(plain))
        return out

    # -- writes --------------------------------------------------------------------

    def put(self, db: str, key: str, value: Any) -> None:
        """Enqueue a write of a msgpack-able value; the last write of a key wins."""
        self._enqueue(db, key, value)

    def put_later(self, db: str, key: str, producer: Callable[[], Any]) -> None:
        """Enqueue a write whose value is computed at commit time.

        For records that change many times per batch (a node's desired set):
        the value is built once per commit instead of once per change.
        """
        self._enqueue(db, key, _Later(producer))

    def delete(self, db: str, key: str) -> None:
        self._enqueue(db, key, _DELETE)

    def _enqueue(self, db: str, key: str, value: Any) -> None:
        if db not in self._dbs:
            raise StoreError(f"unknown database {db!r}")
        self._pending[(db, key)] = value
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        self._have.set()
        if len(self._pending) >= self._settings.batch_max_ops:
            self._kick.set()

    def durable(self) -> asyncio.Future[None]:
        """A future that resolves once everything enqueued so far is committed.

        Does not force a commit: the writer's next batch settles it (group commit).
        """
        if self._batch is not None:
            return self._batch
        if self._writing_batch is not None and not self._writing_batch.done():
            return self._writing_batch
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def flush(self) -> None:
        """Commit everything enqueued so far now, and wait until it is on disk."""
        fut = self.durable()
        if self._pending:
            self._kick.set()
        await asyncio.shield(fut)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the writer task -----------------------------------------------------------

    async def run(self) -> None:
        """Commit batches until cancelled; raises StoreError if a commit fails."""
        while True:
            await self._have.wait()
            if not self._kick.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.batch_interval):
                        await self._kick.wait()
            await self._commit_once()

    async def _commit_once(self) -> None:
        ops, batch = self._take()
        if not ops:
            if batch is not None:
                batch.set_result(None)
            return
        self._writing_batch = batch
        self._writing = asyncio.ensure_future(asyncio.to_thread(self._write, ops))
        try:
            await asyncio.shield(self._writing)
        except asyncio.CancelledError:
            raise  # aclose() waits for the thread and settles the batch
        except StoreError as exc:
            if batch is not None:
                batch.set_exception(exc)
                batch.exception()  # mark retrieved: the raise below reports it
            raise
        self._settle(batch, self._writing)

    def _take(self) -> tuple[list[_Op], asyncio.Future[None] | None]:
        pending, batch = self._pending, self._batch
        self._pending, self._batch = {}, None
        self._have.clear()
        self._kick.clear()
        ops: list[_Op] = []
        for (db, key), value in pending.items():
            if value is _DELETE:
                ops.append((db, key.encode(), None))
                continue
            data = value.producer() if isinstance(value, _Later) else value
            raw, k = msgpack.packb(data, use_bin_type=True), key.encode()
            if self._keys is not None and should_encrypt(db, raw):
                raw = self._keys.encrypt(db, k, raw)
            ops.append((db, k, raw))
        return ops, batch

    def _write(self, ops: list[_Op]) -> None:
        """One write transaction for the whole batch (runs in a worker thread)."""
        with self._lock:
            if self._env is None:
                raise StoreError("store is closed")
            try:
                with self._env.begin(write=True) as txn:
                    for db, key, raw in ops:
                        if raw is None:
                            txn.delete(key, db=self._dbs[db])
                        else:
                            txn.put(key, raw, db=self._dbs[db])
            except lmdb.Error as exc:
                raise StoreError(f"commit of {len(ops)} operations failed: {exc}") from exc
            self.commits += 1
            self.ops_written += len(ops)

    @staticmethod
    def _settle(batch: asyncio.Future[None] | None, writing: asyncio.Future[None] | None) -> None:
        if batch is None or batch.done() or writing is None or not writing.done():
            return
        if writing.cancelled():
            batch.cancel()
        elif writing.exception() is not None:
            batch.set_exception(writing.exception())  # type: ignore[arg-type]
        else:
            batch.set_result(None)


def backup(state_dir: Path, dest: Path, *, compact: bool = True) -> int:
    """Copy the LMDB environment at `state_dir` into the new directory `dest`.

    A consistent snapshot (one read transaction), safe while cloudcore runs, like
    `mdb_copy -c`. Returns the size in bytes of the copy.
    """
    src, dst = Path(state_dir), Path(dest)
    if not (src / "data.mdb").is_file():
        raise StoreError(f"no LMDB store at {src} (data.mdb missing)")
    if dst.exists() and any(dst.iterdir()):
        raise StoreError(f"backup destination {dst} exists and is not empty")
    try:
        _private_dir(dst)
        env = lmdb.open(str(src), readonly=True, lock=True, max_dbs=_MAX_DBS, subdir=True)
        try:
            env.copy(str(dst), compact=compact)
        finally:
            env.close()
        _private_files(dst)
    except (lmdb.Error, OSError) as exc:
        raise StoreError(f"backup of {src} to {dst} failed: {exc}") from exc
    return (dst / "data.mdb").stat().st_size


def _private_dir(path: Path) -> None:
    """Create `path` (and its parents) if missing; make it 0700 either way."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)


def _private_files(path: Path) -> None:
    for name in ("data.mdb", "lock.mdb"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path / name, FILE_MODE)


@dataclass(frozen=True)
class Rotation:
    key: str
    """The key that now encrypts."""
    rewritten: int
    """Records rewritten under it."""
    dropped: tuple[str, ...]
    """Keys removed from the file (`drop_old`)."""


def rotate_encryption_key(state_dir: Path, *, key_file: Path | None = None,
                          drop_old: bool = False, new_key: bool = True,
                          map_size: int = 4 * 1024**3) -> Rotation:
    """Put a new key first in the key file (`new_key`), then rewrite every record that
    holds Secret values under it, in one write transaction; with `drop_old`, remove the
    other keys from the file afterwards (no record needs them any more). Run it with
    cloudcore stopped: a running cloudcore keeps encrypting with the key it started
    with, which `drop_old` would remove."""
    path = Path(state_dir)
    if not (path / "data.mdb").is_file():
        raise StoreError(f"no LMDB store at {path} (data.mdb missing)")
    file = key_file or path / KEY_FILE
    old = KeyRing.load(file)
    ring = old.with_new_key() if new_key else old
    if new_key:
        ring.save()
    rewritten = 0
    try:
        env = lmdb.open(str(path), map_size=map_size, max_dbs=_MAX_DBS, subdir=True,
                        lock=True, mode=FILE_MODE)
        try:
            dbs = {name: env.open_db(name.encode()) for name in DBS}
            with env.begin(write=True) as txn:
                for name, db in dbs.items():
                    todo = []
                    for k, v in txn.cursor(db=db):
                        plain = ring.decrypt(name, k, v)
                        if ((should_encrypt(name, plain) or is_encrypted(v))
                                and key_name(v) != ring.primary):
                            todo.append((k, ring.encrypt(name, k, plain)))
                    for k, v in todo:
                        txn.put(k, v, db=db)
                    rewritten += len(todo)
        finally:
            env.close()
    except lmdb.Error as exc:
        raise StoreError(f"rewriting the store at {path} failed: {exc}") from exc
    dropped: tuple[str, ...] = ()
    if drop_old:
        dropped = tuple(n for n, _ in ring.keys[1:])
        ring.only_primary().save()
    return Rotation(ring.primary, rewritten, dropped)


class _Later:
    __slots__ = ("producer",)

    def __init__(self, producer: Callable[[], Any]) -> None:
        self.producer = producer
