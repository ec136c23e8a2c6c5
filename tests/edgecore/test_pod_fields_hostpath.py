"""hostPath `type` as Kubernetes has it: unset checks nothing (and a missing path becomes
a directory, as the kubelet's runtime makes it), DirectoryOrCreate / FileOrCreate create,
Directory / File / Socket / CharDevice / BlockDevice check, and nothing is created
outside the policy's host-path allowlist."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from edgecore.cache import Cache
from edgecore.reconciler import CrashLoop, Reconciler
from edgecore.reconciler.volumes import VolumeError, Volumes
from shared.delta import EdgeDesired
from shared.entries import parse_pod_entry, pod_entry, pod_key
from shared.models import Pod

from edgecore_fakes import FakeRuntime  # isort: skip


def entry_of(path: Path, type_: str | None, *, name: str = "web"):
    hp: dict[str, Any] = {"path": str(path)}
    if type_ is not None:
        hp["type"] = type_
    pod = Pod.model_validate({"metadata": {"name": name}, "spec": {
        "volumes": [{"name": "h", "hostPath": hp}],
        "containers": [{"name": "m", "image": "b",
                        "volumeMounts": [{"name": "h", "mountPath": "/h"}]}]}})
    return parse_pod_entry(pod_key("default", name), pod_entry(pod))


@pytest.fixture
def vols(tmp_path: Path) -> Volumes:
    return Volumes(tmp_path / "pods")


@pytest.mark.parametrize("type_", [None, ""])
def test_unset_binds_what_is_there_and_creates_a_directory_when_nothing_is(
        vols: Volumes, tmp_path: Path, type_: str | None) -> None:
    f = tmp_path / "a-file"
    f.write_text("x")
    assert vols.prepare(entry_of(f, type_), {}).paths["h"] == f
    assert f.read_text() == "x"  # no check, nothing changed
    missing = tmp_path / "var" / "lib" / "docker" / "containers"
    assert vols.prepare(entry_of(missing, type_), {}).paths["h"] == missing
    assert missing.is_dir() and stat.S_IMODE(missing.stat().st_mode) & 0o755 == 0o755


def test_or_create_types_create(vols: Volumes, tmp_path: Path) -> None:
    d = tmp_path / "new" / "dir"
    vols.prepare(entry_of(d, "DirectoryOrCreate"), {})
    assert d.is_dir()
    f = tmp_path / "new" / "file"
    vols.prepare(entry_of(f, "FileOrCreate"), {})
    assert f.is_file() and f.read_bytes() == b""
    with pytest.raises(VolumeError, match="parent directory is missing"):
        vols.prepare(entry_of(tmp_path / "nope" / "file", "FileOrCreate"), {})
    with pytest.raises(VolumeError, match="is not a File"):
        vols.prepare(entry_of(d, "FileOrCreate"), {})


def test_checking_types_check(vols: Volumes, tmp_path: Path) -> None:
    d, f = tmp_path / "d", tmp_path / "f"
    d.mkdir()
    f.write_text("x")
    sock = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    chr_dev = tmp_path / "null"
    os.mknod(chr_dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    try:
        good = {"Directory": d, "File": f, "Socket": sock, "CharDevice": chr_dev}
        for kind, path in good.items():
            assert vols.prepare(entry_of(path, kind), {}).paths["h"] == path
        for kind in ("Directory", "File", "Socket", "CharDevice", "BlockDevice"):
            for path in good.values():
                if good.get(kind) == path:
                    continue
                with pytest.raises(VolumeError, match=f"is not a {kind}"):
                    vols.prepare(entry_of(path, kind), {})
            with pytest.raises(VolumeError, match="does not exist"):
                vols.prepare(entry_of(tmp_path / "missing", kind), {})
        assert not (tmp_path / "missing").exists()  # checking types create nothing
    finally:
        s.close()


class Sink:
    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}

    def update(self, key: str, status: Any) -> None:
        self.latest[key] = status


async def test_nothing_is_created_outside_the_allowlist(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "escape").symlink_to(tmp_path / "outside")
    items: dict[str, Any] = {}
    for name, path in (("inside", allowed / "logs"), ("outside", tmp_path / "other"),
                       ("escape", allowed / "escape" / "x")):
        p = Pod.model_validate({"metadata": {"name": name}, "spec": {
            "volumes": [{"name": "h", "hostPath": {"path": str(path)}}],
            "containers": [{"name": "m", "image": "b:1", "volumeMounts": [
                {"name": "h", "mountPath": "/h", "readOnly": True}]}]}})
        value = pod_entry(p)
        value["policy"] = {"level": "baseline", "hostPathAllow": [str(allowed)]}
        items[pod_key("default", name)] = value
    sink = Sink()
    rec = Reconciler(node="n", runtime=FakeRuntime(clock=lambda: 1.0),
                     cache=Cache(tmp_path / "cache"), sink=sink, clock=lambda: 1.0,
                     desired=lambda: EdgeDesired(epoch="E", gen=1, items=dict(items)),
                     crashloop=CrashLoop(), volumes=Volumes(tmp_path / "pods"))
    await rec.reconcile_once()
    assert sink.latest["pod/default/inside"].phase == "Running"
    assert (allowed / "logs").is_dir()
    for name in ("outside", "escape"):
        st = sink.latest[f"pod/default/{name}"]
        assert (st.phase, st.reason) == ("Failed", "PolicyViolation"), name
    assert not (tmp_path / "other").exists() and not (tmp_path / "outside").exists()
