"""The LMDB cache: atomic desired writes, outbox order and byte budget, seq persistence."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import pytest

from edgecore.cache import Cache, OutboxKind
from edgecore.cache import store as store_mod
from edgecore.errors import CacheError
from shared.delta import EdgeDesired

REPO = Path(__file__).resolve().parents[2]


def test_desired_roundtrip_and_reopen(tmp_path: Path) -> None:
    d = EdgeDesired(epoch="e1", gen=7,
                    items={"pod/a/b": {"x": [1, 2]}, "configmap/a/c": {"k": "v"}})
    with Cache(tmp_path / "c") as cache:
        assert cache.get_desired() == EdgeDesired()
        cache.put_desired(d)
        assert cache.get_desired() == d
        cache.put_desired(EdgeDesired(epoch="e1", gen=8, items={"pod/a/b": {"x": 3}}))
    with Cache(tmp_path / "c") as cache:
        got = cache.get_desired()
        assert (got.epoch, got.gen, got.items) == ("e1", 8, {"pod/a/b": {"x": 3}})


def test_desired_write_is_all_or_nothing_on_error(tmp_path: Path, monkeypatch) -> None:
    with Cache(tmp_path / "c") as cache:
        old = EdgeDesired(epoch="e", gen=1, items={f"pod/n/p{i}": i for i in range(50)})
        cache.put_desired(old)
        calls = 0
        real = store_mod._pack

        def failing_pack(v):
            nonlocal calls
            calls += 1
            if calls == 30:  # halfway through writing the new items
                raise store_mod.lmdb.Error("disk on fire")
            return real(v)

        monkeypatch.setattr(store_mod, "_pack", failing_pack)
        new = EdgeDesired(epoch="e", gen=2, items={f"pod/n/q{i}": i for i in range(50)})
        with pytest.raises(CacheError):
            cache.put_desired(new)
        monkeypatch.setattr(store_mod, "_pack", real)
        assert cache.get_desired() == old


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edgecore.cache import Cache
    from shared.delta import EdgeDesired
    cache = Cache(Path(sys.argv[1]))
    gen = cache.get_desired().gen
    while True:
        gen += 1
        n = 200 + (gen % 7) * 50  # sets of different sizes: a torn write would show
        cache.put_desired(EdgeDesired(epoch="e", gen=gen,
                                      items={f"pod/ns/p{i}": {"gen": gen, "pad": "x" * 200}
                                             for i in range(n)}))
        print(gen, flush=True)
""")


def test_desired_survives_kill_9_mid_write(tmp_path: Path) -> None:
    """kill -9 while writing in a loop: on reopen we hold exactly one complete set."""
    path = tmp_path / "c"
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        seen = 0
        deadline = time.monotonic() + 20
        while seen < 5 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                seen = int(line)
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert seen >= 5
        with Cache(path) as cache:
            d = cache.get_desired()
        assert d.gen >= seen  # every printed (committed) gen is durable
        assert len(d.items) == 200 + (d.gen % 7) * 50
        assert all(v["gen"] == d.gen for v in d.items.values())


def _report(seq: int, size: int = 10) -> bytes:
    return msgpack.packb({"seq": seq, "pad": "x" * size})


def test_outbox_order_ack_and_seq_persistence(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as cache:
        seqs = [cache.append_report(_report, kind=OutboxKind.STATUS).seq for _ in range(300)]
        assert seqs == list(range(1, 301))
        out = cache.outbox()
        assert [s for s, _ in out] == seqs  # big-endian keys: numeric order past 255
        assert msgpack.unpackb(out[256][1])["seq"] == 257
        assert [s for s, _ in cache.outbox(after=298)] == [299, 300]
        assert cache.ack_reports(290) == 290
        assert [s for s, _ in cache.outbox()] == list(range(291, 301))
        assert cache.ack_reports(10_000) == 10
        assert cache.outbox() == [] and cache.outbox_bytes == 0
    with Cache(tmp_path / "c") as cache:
        assert cache.last_seq() == 300  # seq only grows, even with an empty outbox
        assert cache.append_report(_report, kind=OutboxKind.TELEMETRY).seq == 301


def test_outbox_budget_drops_telemetry_first_and_keeps_newest_status(tmp_path: Path) -> None:
    with Cache(tmp_path / "c", outbox_budget=2000) as cache:
        kinds = {}
        for i in range(12):
            kind = OutboxKind.TELEMETRY if i % 2 else OutboxKind.STATUS
            r = cache.append_report(lambda s: _report(s, 250), kind=kind)
            kinds[r.seq] = kind
            left = {s for s, _ in cache.outbox()}
            assert cache.outbox_bytes <= 2000
            if r.dropped_status:  # status goes only once no older telemetry is left
                assert all(kinds[s] is OutboxKind.STATUS for s in left if s != r.seq)
        dropped = set(kinds) - left
        assert 2 in dropped and 1 in dropped  # oldest telemetry, then oldest status
        assert 11 in left and 12 in left
        # Now only status reports: the oldest go, the newest always stays.
        big = cache.append_report(lambda s: _report(s, 5000), kind=OutboxKind.STATUS)
        assert big.dropped_status > 0
        assert [s for s, _ in cache.outbox()] == [big.seq]


def test_outbox_bytes_recomputed_on_open(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as cache:
        for _ in range(5):
            cache.append_report(_report, kind=OutboxKind.STATUS)
        n = cache.outbox_bytes
    with Cache(tmp_path / "c") as cache:
        assert cache.outbox_bytes == n > 0


def test_reported_statuses_move_with_the_report(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as cache:
        cache.append_report(_report, kind=OutboxKind.STATUS,
                            reported={"pod/a/x": {"phase": "Running"}, "pod/a/y": {"phase": "x"}})
        cache.append_report(_report, kind=OutboxKind.STATUS, reported={"pod/a/y": None})
        cache.put_pod_record("pod/a/x", {"revision": "r1", "containers": {}})
    with Cache(tmp_path / "c") as cache:
        assert cache.reported_statuses() == {"pod/a/x": {"phase": "Running"}}
        assert cache.pod_records() == {"pod/a/x": {"revision": "r1", "containers": {}}}
        cache.delete_pod_record("pod/a/x")
        assert cache.pod_records() == {}


def test_closed_cache_raises_cache_error(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(CacheError):
        cache.get_desired()


# -- a corrupt cache file (failing SD card, bad write): checked in a child, moved aside --


def _filled(path: Path) -> EdgeDesired:
    d = EdgeDesired(epoch="e1", gen=3, items={f"pod/default/p{i}": {"x": "y" * 200}
                                              for i in range(50)})
    with Cache(path) as cache:
        cache.put_desired(d)
        cache.append_report(_report, kind=OutboxKind.STATUS)
    return d


def test_a_readable_cache_passes_the_check_and_keeps_its_data(tmp_path: Path) -> None:
    from edgecore.cache.check import check, open_checked

    assert check(tmp_path / "none") is None  # nothing yet: a fresh cache
    d = _filled(tmp_path / "c")
    assert check(tmp_path / "c") is None
    cache, why = open_checked(tmp_path / "c")
    with cache:
        assert why is None and cache.get_desired() == d
    assert not (tmp_path / "c.corrupt").exists()


def test_damaged_pages_are_caught_and_the_cache_is_moved_aside(tmp_path: Path) -> None:
    from edgecore.cache.check import check, open_checked

    path = tmp_path / "c"
    _filled(path)
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[2 * 4096:] = bytes((i * 131 + 7) % 256 for i in range(len(raw) - 2 * 4096))
    data.write_bytes(bytes(raw))  # the two meta pages intact, every tree page garbage
    why = check(path)
    assert why is not None
    cache, why2 = open_checked(path)
    with cache:
        assert why2 == why
        assert cache.get_desired() == EdgeDesired()  # fresh: the cloud sends it again
        cache.put_desired(EdgeDesired(epoch="e2", gen=1, items={}))
    assert (tmp_path / "c.corrupt" / "data.mdb").read_bytes() == bytes(raw)  # kept to look at
    # a second corrupt cache replaces the first one set aside (bounded disk use)
    (path / "data.mdb").write_bytes(b"not lmdb at all" * 1000)
    cache, why3 = open_checked(path)
    cache.close()
    assert why3 is not None
    assert (tmp_path / "c.corrupt" / "data.mdb").read_bytes().startswith(b"not lmdb")


def test_a_value_the_agent_could_not_decode_is_corrupt(tmp_path: Path) -> None:
    import lmdb

    from edgecore.cache.check import check

    path = tmp_path / "c"
    _filled(path)
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"desired")) as txn:
        txn.put(b"k/pod/default/p0", b"\xc1\xc1")  # 0xc1 is never valid msgpack
    env.close()
    why = check(path)
    assert why is not None and "p0" not in why  # the reason, not the data
