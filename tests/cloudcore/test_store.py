"""The LMDB store: batched commits, flush, durable(), reload, a stable epoch; Secret
values encrypted at rest (key file, rotation, a wrong key), private file modes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import lmdb
import msgpack
import pytest

from cloudcore.config import StoreSettings
from cloudcore.errors import StoreError
from cloudcore.store import KeyRing, Store, backup, rotate_encryption_key
from cloudcore.store.encryption import KEY_FILE


async def _with_writer(store: Store):  # type: ignore[no-untyped-def]
    return asyncio.create_task(store.run(), name="test.writer")


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_batches_many_puts_into_few_commits(tmp_path: Path) -> None:
    settings = StoreSettings(state_dir=tmp_path / "s", batch_interval=0.05)
    async with Store(settings) as store:
        writer = await _with_writer(store)
        for i in range(500):
            store.put("reportseq", f"node-{i % 50}", i)
        await store.flush()
        assert store.commits == 1
        assert store.ops_written == 50  # last write of a key wins inside a batch
        await _stop(writer)
    async with Store(settings) as store:
        loaded = store.load()
    assert loaded["reportseq"]["node-49"] == 499


async def test_commits_after_interval_and_durable_future(tmp_path: Path) -> None:
    settings = StoreSettings(state_dir=tmp_path / "s", batch_interval=0.01)
    async with Store(settings) as store:
        writer = await _with_writer(store)
        state = {"v": 1}
        store.put_later("meta", "x", lambda: dict(state))
        fut = store.durable()
        state["v"] = 2  # value is taken at commit time
        await asyncio.wait_for(fut, 2)
        assert store.commits == 1
        store.delete("meta", "x")
        store.put("nodes", "a", {"n": 1})
        await store.flush()
        await _stop(writer)
        loaded = store.load()
    assert "x" not in loaded["meta"]
    assert loaded["nodes"] == {"a": {"n": 1}}


async def test_pending_writes_committed_on_close_and_epoch_survives(tmp_path: Path) -> None:
    settings = StoreSettings(state_dir=tmp_path / "s")
    async with Store(settings) as store:
        epoch = store.epoch
        store.put("pods", "default/p", {"a": 1})  # no writer running: close commits it
    async with Store(settings) as store:
        assert store.epoch == epoch
        assert store.load()["pods"] == {"default/p": {"a": 1}}


async def test_flush_with_nothing_pending_returns(tmp_path: Path) -> None:
    async with Store(StoreSettings(state_dir=tmp_path / "s")) as store:
        await asyncio.wait_for(store.flush(), 1)


# -- Secret values at rest ------------------------------------------------------------------

SECRET_VALUE = "hunter2-the-root-password"
SECRET_B64 = base64.b64encode(SECRET_VALUE.encode()).decode()


def _secret_records(store: Store) -> None:
    store.put("secrets", "default/db", {"kind": "Secret", "metadata": {"name": "db"},
                                        "data": {"password": SECRET_B64}})
    store.put("desired", "edge-1", {"items": {"secret/default/db": [
        {"data": {"password": SECRET_B64}}, 3]}, "gen": 3})
    store.put("desired", "edge-2", {"items": {"pod/default/web": [{"spec": {}}, 1]}, "gen": 1})


def _raw(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.iterdir()) if p.suffix == ".mdb")


async def test_secret_values_are_encrypted_at_rest_and_read_back(tmp_path: Path) -> None:
    settings = StoreSettings(state_dir=tmp_path / "s")
    async with Store(settings) as store:
        _secret_records(store)  # no writer running: close commits them
    raw = _raw(tmp_path / "s")
    assert SECRET_VALUE.encode() not in raw and SECRET_B64.encode() not in raw
    assert b"pod/default/web" in raw  # a desired set without Secrets stays plain
    keys = tmp_path / "s" / KEY_FILE
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    async with Store(settings) as store:  # a restart reads them with the key file
        loaded = store.load()
    assert loaded["secrets"]["default/db"]["data"]["password"] == SECRET_B64
    assert loaded["desired"]["edge-1"]["items"]["secret/default/db"][0]["data"] == \
        {"password": SECRET_B64}


async def test_a_wrong_key_fails_clearly(tmp_path: Path) -> None:
    settings = StoreSettings(state_dir=tmp_path / "s")
    async with Store(settings) as store:
        _secret_records(store)
    real = KeyRing.load(tmp_path / "s" / KEY_FILE)
    other = tmp_path / "other.keys"
    KeyRing(((real.primary, os.urandom(32)),), other).save()  # same name, other bytes
    async with Store(replace(settings, encryption_key_file=other)) as store:
        with pytest.raises(StoreError, match=r"does not decrypt with key .*wrong key file"):
            store.load()
    KeyRing((("another", os.urandom(32)),), other).save()  # another name altogether
    async with Store(replace(settings, encryption_key_file=other)) as store:
        with pytest.raises(StoreError, match=r"encrypted with key .*does not hold"):
            store.load()
    with pytest.raises(StoreError, match="cannot read encryption key file"):
        Store(replace(settings, encryption_key_file=tmp_path / "missing.keys")).open()
    (tmp_path / "bad.keys").write_text("k1:notbase64\n")
    with pytest.raises(StoreError, match=r"bad.keys:1: expected `name:base64"):
        Store(replace(settings, encryption_key_file=tmp_path / "bad.keys")).open()


async def test_rotation_rewrites_every_secret_under_the_new_key(tmp_path: Path) -> None:
    settings = StoreSettings(state_dir=tmp_path / "s")
    async with Store(settings) as store:
        _secret_records(store)
    keys = tmp_path / "s" / KEY_FILE
    old = KeyRing.load(keys)
    rot = rotate_encryption_key(tmp_path / "s")
    assert rot.rewritten == 2 and rot.dropped == ()
    ring = KeyRing.load(keys)
    assert ring.primary == rot.key != old.primary
    assert [n for n, _ in ring.keys] == [rot.key, old.primary]
    rot2 = rotate_encryption_key(tmp_path / "s", drop_old=True)
    assert rot2.rewritten == 2 and set(rot2.dropped) == {rot.key, old.primary}
    assert [n for n, _ in KeyRing.load(keys).keys] == [rot2.key]
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    async with Store(settings) as store:
        assert store.load()["secrets"]["default/db"]["data"]["password"] == SECRET_B64
    raw = _raw(tmp_path / "s")
    assert SECRET_B64.encode() not in raw
    # the dropped key decrypts nothing any more: a store written under it would fail
    assert rotate_encryption_key(tmp_path / "s", new_key=False).rewritten == 0


async def test_plain_secret_records_from_before_are_encrypted_at_load(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    env = lmdb.open(str(path), max_dbs=32, subdir=True)
    db = env.open_db(b"secrets")
    with env.begin(write=True) as txn:
        txn.put(b"default/db", msgpack.packb({"data": {"password": SECRET_B64}}), db=db)
    env.close()
    async with Store(StoreSettings(state_dir=path)) as store:
        assert store.load()["secrets"]["default/db"] == {"data": {"password": SECRET_B64}}
    async with Store(StoreSettings(state_dir=path)) as store:
        assert store.load()["secrets"]["default/db"] == {"data": {"password": SECRET_B64}}
    dest = tmp_path / "backup"
    backup(path, dest)  # a compacted copy leaves no old plain page behind
    assert SECRET_B64.encode() not in _raw(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "data.mdb").stat().st_mode) == 0o600


def _modes(path: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in (path, *path.iterdir())}


async def test_state_dir_0700_and_files_0600_even_if_they_were_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with Store(StoreSettings(state_dir=path)):
        pass
    assert _modes(path) == {"s": 0o700, "data.mdb": 0o600, "lock.mdb": 0o600,
                            KEY_FILE: 0o600}
    os.chmod(path, 0o755)  # a store from before: world-readable
    os.chmod(path / "data.mdb", 0o644)
    os.chmod(path / "lock.mdb", 0o644)
    async with Store(StoreSettings(state_dir=path)):
        pass
    assert _modes(path)["s"] == 0o700 and _modes(path)["data.mdb"] == 0o600


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"),
                    reason="needs root and runuser to act as another user")
async def test_an_unprivileged_user_cannot_read_the_store(tmp_path: Path) -> None:
    # tmp_path's parents are 0700; put the store where anyone could reach it but for
    # its own modes
    base = Path(tempfile.mkdtemp(prefix="edgefed-store-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        path = base / "s"
        async with Store(StoreSettings(state_dir=path)) as store:
            _secret_records(store)
        for target in (path / "data.mdb", path / "lock.mdb", path / KEY_FILE):
            r = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(target)],
                               capture_output=True, text=True, check=False)
            assert r.returncode != 0 and "Permission denied" in r.stderr, r
        os.chmod(path, 0o755)  # even with the directory open, the files are 0600
        for target in (path / "data.mdb", path / KEY_FILE):
            r = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(target)],
                               capture_output=True, text=True, check=False)
            assert r.returncode != 0 and "Permission denied" in r.stderr, r
    finally:
        shutil.rmtree(base)


async def test_cloudcore_rotate_encryption_key_command(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    from cloudcore.__main__ import main

    async with Store(StoreSettings(state_dir=tmp_path / "s")) as store:
        _secret_records(store)
    assert main(["rotate-encryption-key", "--state-dir", str(tmp_path / "s")]) == 0
    assert "rewrote 2 records" in capsys.readouterr().out
    assert main(["rotate-encryption-key", "--state-dir", str(tmp_path / "s"),
                 "--drop-old"]) == 0
    assert "removed keys" in capsys.readouterr().out
    assert len(KeyRing.load(tmp_path / "s" / KEY_FILE).keys) == 1
    assert main(["rotate-encryption-key", "--state-dir", str(tmp_path / "none")]) == 1
    assert "data.mdb missing" in capsys.readouterr().err
