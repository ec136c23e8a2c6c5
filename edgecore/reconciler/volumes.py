"""Pod volumes on this node: hostPath, emptyDir, configMap and secret.

Everything a pod's volumes need on the host lives under one directory per pod,
`{pods_dir}/{namespace}_{name}/` (`_` never occurs in DNS-1123 names):

- `empty/{volume}/`: emptyDir, mode 0777 like Kubernetes'. Kept across container
  restarts and revision updates of the pod key; removed with the pod.
- `configmap/{volume}/`, `secret/{volume}/`: one file per key (or per `items`
  entry) written by the agent from the desired-set entries `configmap/{ns}/{name}`
  and `secret/{ns}/{name}`. Each file is replaced atomically (write a temp file in
  the same directory, then rename), so a reader sees the old or the new content,
  never a torn file; keys that disappear are deleted. The *directory* is bind
  mounted (read-only), because a single-file bind mount pins the inode and would
  miss the rename (docs/runtime.md); so running containers see updates in place.
- hostPath: nothing under the pod dir; the host path is checked (or created) per
  its `type` and bind mounted (unset: created as a directory if nothing is there).
- `secret/` is a tmpfs mounted per pod (size-limited, `nosuid,nodev,noexec`) before
  the first Secret value is written, so Secret values never reach the disk; it is
  unmounted when the pod goes (and by `sweep` after a crash). The volumes root is 0700:
  no local user but root reaches any pod's files.

All methods are synchronous file-system work; the reconciler calls them in a
worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgecore.runtime.types import Mount
from shared.entries import PodEntry, config_files, configmap_key, secret_key, split_key
from shared.errors import AuthFailed, ObjectError
from shared.pods import ConfigMapVolumeSource, Container, SecretVolumeSource, Volume

log = logging.getLogger(__name__)

_TMP = ".edgefed-tmp-"
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MNT_DETACH = 2
SECRET_TMPFS_BYTES = 16 * 1024 * 1024  # per pod; Kubernetes caps a Secret at 1 MiB


def _mounts_under(d: Path) -> list[Path]:
    """Mount points at or below `d`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(d)
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split(" ", 5)
            if len(fields) > 4:
                mp = fields[4].replace("\\040", " ").replace("\\134", "\\")
                if mp == prefix or mp.startswith(prefix + "/"):
                    out.append(Path(mp))
    return sorted(out, key=lambda p: len(p.parts), reverse=True)


def _mount_tmpfs(d: Path, size: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"size={size},mode=0755".encode()
    if libc.mount(b"tmpfs", os.fsencode(d), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                  opts) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {d}: {os.strerror(err)}")


def _unmount(d: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(d), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        log.warning("cannot unmount %s: %s", d, os.strerror(err))


PROPAGATION: dict[str, Literal["rprivate", "rslave", "rshared"]] = {
    "None": "rprivate", "HostToContainer": "rslave", "Bidirectional": "rshared"}
"""Kubernetes' mountPropagation -> the bind mount's propagation (kubelet's mapping)."""


class VolumeError(Exception):
    """A volume of the pod cannot be made ready yet (missing configMap, bad hostPath).

    Not a crash: the pod's containers wait (pod Pending) and the next pass tries
    again, e.g. once the cloud has delivered the configMap.
    """


@dataclass(frozen=True)
class PreparedVolumes:
    """Host paths of a pod's volumes, by volume name."""

    paths: Mapping[str, Path]
    read_only: frozenset[str]  # configMap and secret volumes are always mounted read-only

    def mounts(self, c: Container) -> tuple[Mount, ...]:
        return tuple(
            Mount(source=self.paths[m.name], destination=m.mount_path,
                  read_only=m.read_only or m.name in self.read_only,
                  propagation=PROPAGATION[m.mount_propagation or "None"])
            for m in c.volume_mounts
        )


class Volumes:
    def __init__(self, root: Path, *, secret_tmpfs_bytes: int = SECRET_TMPFS_BYTES,
                 open_secret: Callable[[str, Any], Any] | None = None) -> None:
        self.root = Path(root).absolute()
        self.secret_tmpfs_bytes = secret_tmpfs_bytes
        self._tmpfs: set[Path] = set()  # secret dirs known to be mounted (saves mountinfo reads)
        self._open_secret = open_secret
        """`open_secret(entry key, value)`: a sealed Secret entry's clear value
        (shared.seal; raises AuthFailed). Secrets stay sealed in the cache and are
        opened only here, when their files are written."""
        # What was last written per projected directory (digest), so an unchanged
        # configMap costs no file I/O per pass.
        self._written: dict[Path, str] = {}

    def pod_dir(self, key: str) -> Path:
        _, ns, name = split_key(key)
        return self.root / f"{ns}_{name}"

    def prepare(self, entry: PodEntry, items: Mapping[str, Any]) -> PreparedVolumes:
        """Make every volume of the pod ready; raise VolumeError naming the first that is not.

        `items` is the node's desired set (configMap/secret entries are read from it).
        Idempotent; called on every pass so configMap changes reach running pods.
        """
        paths: dict[str, Path] = {}
        read_only: set[str] = set()
        if not entry.spec.volumes:
            return PreparedVolumes(paths, frozenset())
        pod_dir = self.pod_dir(entry.key)
        if not self.root.exists():
            self.root.mkdir(parents=True, exist_ok=True)
        if stat.S_IMODE(self.root.stat().st_mode) != 0o700:
            self.root.chmod(0o700)  # secrets live below; containers see only their mounts
        for v in entry.spec.volumes:
            try:
                paths[v.name] = self._one(entry, pod_dir, v, items)
            except OSError as exc:
                raise VolumeError(f"volume {v.name!r}: {exc}") from exc
            if v.config_map is not None or v.secret is not None:
                read_only.add(v.name)
        return PreparedVolumes(paths, frozenset(read_only))

    def _one(self, entry: PodEntry, pod_dir: Path, v: Volume, items: Mapping[str, Any]) -> Path:
        if v.host_path is not None:
            return _host_path(v.name, Path(v.host_path.path), v.host_path.type or "")
        if v.empty_dir is not None:
            d = pod_dir / "empty" / v.name
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                d.chmod(0o777)  # any container user may write, as in Kubernetes
            return d
        src: ConfigMapVolumeSource | SecretVolumeSource
        if v.config_map is not None:
            src, what = v.config_map, "configmap"
            k = configmap_key(entry.namespace, v.config_map.name)
        else:
            assert v.secret is not None
            src, what = v.secret, "secret"
            k = secret_key(entry.namespace, v.secret.secret_name)
        if what == "secret":
            self._secret_tmpfs(pod_dir / what)
        d = pod_dir / what / v.name
        if k in items:
            try:
                value = items[k]
                if what == "secret" and self._open_secret is not None:
                    value = self._open_secret(k, value)
                files = config_files(k, value)
            except (ObjectError, AuthFailed) as exc:
                raise VolumeError(f"volume {v.name!r}: {exc}") from None
        elif src.optional:
            files = {}
        else:
            _, ns, name = split_key(k)
            raise VolumeError(f"volume {v.name!r}: {what} {ns}/{name} not found on this node")
        if src.items is not None:
            projected: dict[str, bytes] = {}
            for it in src.items:
                if it.key in files:
                    projected[it.path] = files[it.key]
                elif not src.optional:
                    raise VolumeError(f"volume {v.name!r}: {what} {k.split('/', 1)[1]} has no "
                                      f"key {it.key!r}")
            files = projected
        self._write_dir(d, files)
        return d

    def write_file(self, key: str, name: str, data: bytes) -> Path:
        """Write a file of the pod's own (its resolv.conf) into its directory, atomically
        (0644; an unchanged file is left alone), and return its path."""
        d = self.pod_dir(key)
        if not self.root.exists():
            self.root.mkdir(parents=True, exist_ok=True)
        if stat.S_IMODE(self.root.stat().st_mode) != 0o700:
            self.root.chmod(0o700)
        d.mkdir(parents=True, exist_ok=True)
        target = d / name
        with contextlib.suppress(OSError):
            if target.read_bytes() == data:
                return target
        tmp = d / f"{_TMP}{name}"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, target)
        return target

    def config_data(self, k: str, items: Mapping[str, Any]) -> dict[str, bytes] | None:
        """The keys of the `configmap/...` or `secret/...` entry `k` in the desired set
        (a sealed Secret opened), None if the node does not have it; raises VolumeError
        if the entry is malformed. For a container's env (`edgecore.reconciler.env`)."""
        if k not in items:
            return None
        value = items[k]
        try:
            if k.startswith("secret/") and self._open_secret is not None:
                value = self._open_secret(k, value)
            return config_files(k, value)
        except (ObjectError, AuthFailed) as exc:
            raise VolumeError(str(exc)) from None

    def _secret_tmpfs(self, d: Path) -> None:
        """Make sure the pod's secret directory is its own tmpfs before anything is written."""
        if d in self._tmpfs:
            return
        if d in _mounts_under(d):  # mounted by an earlier agent process
            self._tmpfs.add(d)
            return
        d.mkdir(parents=True, exist_ok=True)
        for leftover in d.iterdir():  # written by an older agent, on disk: not any more
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        for p in list(self._written):
            if p.is_relative_to(d):
                del self._written[p]
        _mount_tmpfs(d, self.secret_tmpfs_bytes)
        self._tmpfs.add(d)

    def _write_dir(self, d: Path, files: Mapping[str, bytes]) -> None:
        h = hashlib.sha256()
        for name in sorted(files):
            h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        digest = h.hexdigest()
        if self._written.get(d) == digest and d.is_dir():
            return
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        for name, data in files.items():
            target = d / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                if target.is_file() and target.read_bytes() == data:
                    continue
            tmp = target.parent / f"{_TMP}{target.name}"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), 0o644)
            os.replace(tmp, target)  # atomic within the directory
        wanted = {d / name for name in files}
        for path in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                if not any(w.is_relative_to(path) for w in wanted):
                    shutil.rmtree(path, ignore_errors=True)
            elif path not in wanted:
                path.unlink(missing_ok=True)
        self._written[d] = digest

    def remove(self, key: str) -> bool:
        """Delete everything of the pod (emptyDir content included); True if it existed."""
        d = self.pod_dir(key)
        for p in list(self._written):
            if p.is_relative_to(d):
                del self._written[p]
        if not d.exists():
            return False
        self._tmpfs = {p for p in self._tmpfs if not p.is_relative_to(d)}
        for mnt in _mounts_under(d):
            _unmount(mnt)
        shutil.rmtree(d, ignore_errors=True)
        return True

    def sweep(self, keep: set[str]) -> list[str]:
        """Remove pod dirs whose pod key is not in `keep` (left by a crash mid-delete)."""
        if not self.root.is_dir():
            return []
        keep_dirs = {self.pod_dir(k).name for k in keep}
        removed = []
        for d in self.root.iterdir():
            if d.is_dir() and d.name not in keep_dirs and "_" in d.name:
                ns, name = d.name.split("_", 1)
                self.remove(f"pod/{ns}/{name}")
                removed.append(f"pod/{ns}/{name}")
        return removed


def _host_path(vol: str, path: Path, kind: str) -> Path:
    """Check (or create) a hostPath per its type, Kubernetes' rules: unset checks nothing
    but, when nothing is there, creates a directory (0755), as the kubelet's container
    runtime does with a missing bind source; DirectoryOrCreate / FileOrCreate create
    (a file's parent directory must exist, as in Kubernetes); Directory, File, Socket,
    CharDevice and BlockDevice check. The policy check (the allowlist, the path resolved
    on the node) runs before this, so nothing is created outside what the pod may mount."""
    if kind == "DirectoryOrCreate":
        if not path.exists():
            path.mkdir(parents=True, mode=0o755)
        kind = "Directory"
    elif kind == "FileOrCreate":
        if not path.exists():
            if not path.parent.is_dir():
                raise VolumeError(f"volume {vol!r}: hostPath {path}: parent directory is missing")
            path.touch(mode=0o644)
        kind = "File"
    if not kind:
        if not path.exists() and not path.is_symlink():
            path.mkdir(parents=True, mode=0o755)
        return path
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise VolumeError(f"volume {vol!r}: hostPath {path} does not exist "
                          f"(type {kind})") from None
    ok = {"Directory": stat.S_ISDIR, "File": stat.S_ISREG, "Socket": stat.S_ISSOCK,
          "CharDevice": stat.S_ISCHR, "BlockDevice": stat.S_ISBLK}[kind](mode)
    if not ok:
        raise VolumeError(f"volume {vol!r}: hostPath {path} is not a {kind}")
    return path
