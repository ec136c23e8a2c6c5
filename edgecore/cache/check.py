"""Is the cache readable? Checked in a child process before the agent opens it.

    python -m edgecore.cache.check PATH     # exit 0: readable; 1: corrupt (reason on stderr)

LMDB has no page checksums: a file damaged by a failing SD card or a bad write can
make a reader fail with MDB_CORRUPTED, return garbage, or crash the process. So the
agent never walks a suspicious file in its own process: `check` runs this module in a
child, which opens the environment read-only and reads every entry of every named
database, checking each value as the agent would decode it (`store.check_entry`).
A non-zero exit, a signal or a timeout means corrupt.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lmdb

from edgecore.cache.store import Cache, check_entry

log = logging.getLogger(__name__)

DATABASES = (b"desired", b"pods", b"outbox", b"meta")
TIMEOUT_S = 60.0


def walk(path: Path) -> int:
    """Reads every entry; returns how many. Raises on anything unreadable."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=8, subdir=True,
                    readahead=False)
    n = 0
    try:
        for name in DATABASES:
            try:
                db = env.open_db(name, create=False)
            except lmdb.NotFoundError:
                continue  # an older or fresh cache without this database
            with env.begin(db=db) as txn:
                for key, value in txn.cursor():
                    check_entry(name, key, value)
                    n += 1
    finally:
        env.close()
    return n


def check(path: Path, *, timeout_s: float = TIMEOUT_S) -> str | None:
    """None if the cache at `path` is readable (or does not exist yet, or cannot be
    read for lack of permissions, which `Cache` reports itself), else why not."""
    data = Path(path) / "data.mdb"
    if not data.exists() or not os.access(data, os.R_OK | os.W_OK):
        return None
    try:
        proc = subprocess.run([sys.executable, "-m", "edgecore.cache.check", str(path)],
                              check=False, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"reading it took more than {timeout_s:.0f} s"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        return f"reading it crashed the reader (signal {-proc.returncode})"
    return (proc.stderr.strip().splitlines() or ["unreadable"])[-1]


def open_checked(path: Path, **kw: Any) -> tuple[Cache, str | None]:
    """Opens the cache at `path` after `check`. A corrupt one is moved aside to
    `PATH.corrupt` (replacing an older one) and a fresh, empty cache is opened: the
    desired state comes back from the cloud (the empty set never stops running
    containers, which are adopted), the report seq restarts (the cloud resets its
    count on the Resync), and what the outbox held is lost. Returns the cache and the
    reason it was replaced, if it was."""
    path = Path(path)
    why = check(path)
    if why is not None:
        aside = path.with_name(path.name + ".corrupt")
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
        log.error("the cache at %s is corrupt (%s); moved it to %s and starting with an "
                  "empty one: the desired state comes back from the cloud, running "
                  "containers are kept, unsent reports are lost", path, why, aside)
    return Cache(path, **kw), why


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgecore.cache.check PATH", file=sys.stderr)
        return 2
    try:
        n = walk(Path(args[0]))
    except Exception as exc:  # any failure to read means "do not trust this file"
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{n} entries readable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
