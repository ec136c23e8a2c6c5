"""Accelerators: discovery plugins and exclusive allocation to containers.

Discovery (once at start) turns device nodes into `Device`s per resource name:

| plugin  | resource name           | one device per      | also given (shared)              |
|---------|-------------------------|---------------------|----------------------------------|
| NVIDIA  | `nvidia.com/gpu`        | `/dev/nvidia[0-9]+` | nvidiactl, nvidia-uvm(-tools)... |
| DRI     | `dri.edgefed.io/render` | `/dev/dri/renderD*` | -                                |
| Coral   | `coral.ai/tpu`          | `/dev/apex_*`       | -                                |
| Hailo   | `hailo.ai/npu`          | `/dev/hailo*`       | -                                |
| generic | from settings.devices   | each configured path| -                                |

The node reports the count per resource name as capacity and allocatable. A
container whose `resources.limits` (or requests) name such a resource gets that
many devices from the free set, exclusively; the allocation is kept in the cache
(so it survives agent restarts and a running container keeps its devices) and
freed when the pod leaves the node or the container stops asking for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.pods import Container

NVIDIA = "nvidia.com/gpu"
DRI = "dri.edgefed.io/render"
CORAL = "coral.ai/tpu"
HAILO = "hailo.ai/npu"
_NVIDIA_SHARED = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
_NATIVE = frozenset({"cpu", "memory", "pods", "ephemeral-storage"})


@dataclass(frozen=True)
class Device:
    """One allocatable device: `id` is its primary host node; `paths` are the runtime's
    `HOST[:CONTAINER]` device entries it needs (the primary first)."""

    resource: str
    id: str
    paths: tuple[str, ...]


class InsufficientDevices(Exception):
    """Fewer free devices of a resource than a container asks for."""


def _numbered(pattern: str, root: Path, glob: str) -> list[Path]:
    rx = re.compile(pattern)
    found = [p for p in root.glob(glob) if rx.fullmatch(p.name)]
    return sorted(found, key=lambda p: (len(p.name), p.name))


def discover_nvidia(root: Path) -> list[Device]:
    shared = tuple(str(root / n) for n in _NVIDIA_SHARED if (root / n).exists())
    return [Device(NVIDIA, str(p), (str(p), *shared))
            for p in _numbered(r"nvidia[0-9]+", root, "nvidia*")]


def discover_dri(root: Path) -> list[Device]:
    return [Device(DRI, str(p), (str(p),))
            for p in _numbered(r"renderD[0-9]+", root / "dri", "renderD*")]


def discover_coral(root: Path) -> list[Device]:
    return [Device(CORAL, str(p), (str(p),)) for p in _numbered(r"apex_[0-9]+", root, "apex_*")]


def discover_hailo(root: Path) -> list[Device]:
    return [Device(HAILO, str(p), (str(p),)) for p in _numbered(r"hailo[0-9]+", root, "hailo*")]


PLUGINS: tuple[Callable[[Path], list[Device]], ...] = (
    discover_nvidia, discover_dri, discover_coral, discover_hailo)


def generic_devices(resource: str, paths: Iterable[str]) -> list[Device]:
    """Configured devices; a host path outside /dev is given to the container as
    /dev/<basename> unless the entry says `HOST:CONTAINER`."""
    out = []
    for entry in paths:
        host, sep, inside = entry.partition(":")
        if not sep and not host.startswith("/dev/"):
            inside = "/dev/" + Path(host).name
        out.append(Device(resource, host, (f"{host}:{inside}" if inside else host,)))
    return out


def discover(
    *, dev_root: Path = Path("/dev"), builtin: bool = True,
    generic: Sequence[tuple[str, Sequence[str]]] = (),
) -> dict[str, list[Device]]:
    """Every accelerator of this node by resource name (resources without devices omitted)."""
    found: dict[str, list[Device]] = {}
    if builtin:
        for plugin in PLUGINS:
            for d in plugin(dev_root):
                found.setdefault(d.resource, []).append(d)
    for resource, paths in generic:
        found.setdefault(resource, []).extend(generic_devices(resource, paths))
    return found


def wanted(c: Container) -> dict[str, int]:
    """Extended resources (a `domain/name`) a container asks for, with counts > 0."""
    out = {}
    for name in {*c.resources.requests, *c.resources.limits}:
        if name in _NATIVE or name.startswith("hugepages-") or "/" not in name:
            continue
        n = c.resources.request(name)
        if n > 0:
            out[name] = n
    return out


class DeviceAllocator:
    """Exclusive device allocation per (pod key, container name).

    In-memory view of the persisted allocations; the caller persists
    `pod_value(key)` (or deletes it) whenever `allocate`/`retain`/`release`
    report a change. Methods never await, so concurrent pod tasks cannot interleave.
    """

    def __init__(self, devices: Mapping[str, list[Device]],
                 allocations: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.devices = {r: list(ds) for r, ds in devices.items()}
        self._by_id = {d.id: d for ds in self.devices.values() for d in ds}
        # pod key -> container -> resource -> device ids
        self._alloc: dict[str, dict[str, dict[str, list[str]]]] = {}
        for key, value in (allocations or {}).items():
            pod = {str(c): {str(r): [str(i) for i in ids] for r, ids in res.items()}
                   for c, res in value.items() if isinstance(res, dict)}
            self._alloc[key] = pod

    def capacity(self) -> dict[str, int]:
        return {r: len(ds) for r, ds in self.devices.items() if ds}

    def _owned(self) -> set[str]:
        return {i for pod in self._alloc.values() for res in pod.values()
                for ids in res.values() for i in ids}

    def free(self, resource: str) -> list[Device]:
        owned = self._owned()
        return [d for d in self.devices.get(resource, []) if d.id not in owned]

    def allocate(self, key: str, c: Container) -> tuple[list[Device], bool]:
        """The devices of container `c` of pod `key` (reusing its allocation); returns
        (devices, changed). Raises InsufficientDevices (allocating nothing) if short."""
        want = wanted(c)
        pod = self._alloc.get(key, {})
        have = pod.get(c.name, {})
        new: dict[str, list[str]] = {}
        owned = self._owned()
        for resource, n in sorted(want.items()):
            keep = [i for i in have.get(resource, []) if i in self._by_id][:n]
            free = [d.id for d in self.devices.get(resource, []) if d.id not in owned]
            if len(keep) + len(free) < n:
                total = len(self.devices.get(resource, []))
                raise InsufficientDevices(
                    f"container {c.name!r} needs {n} {resource}; this node has {total}, "
                    f"{len(keep) + len(free)} free")
            new[resource] = keep + free[: n - len(keep)]
        changed = new != have
        if changed:
            if new:
                self._alloc.setdefault(key, {})[c.name] = new
            else:
                pod.pop(c.name, None)
                if not pod:
                    self._alloc.pop(key, None)
        devices = [self._by_id[i] for r in sorted(new) for i in new[r]]
        return devices, changed

    def retain(self, key: str, containers: Iterable[str]) -> bool:
        """Free the allocations of containers of `key` not in `containers`; True if changed."""
        pod = self._alloc.get(key)
        if not pod:
            return False
        names = set(containers)
        gone = [c for c in pod if c not in names]
        for c in gone:
            del pod[c]
        if not pod:
            self._alloc.pop(key, None)
        return bool(gone)

    def release(self, key: str) -> bool:
        """Free every device of pod `key`; True if it held any."""
        return self._alloc.pop(key, None) is not None

    def pod_value(self, key: str) -> dict[str, Any] | None:
        """What to persist for `key` (None: delete the record)."""
        pod = self._alloc.get(key)
        return None if not pod else {c: {r: list(ids) for r, ids in res.items()}
                                     for c, res in pod.items()}

    def allocations(self) -> dict[str, dict[str, dict[str, list[str]]]]:
        return {k: {c: {r: list(i) for r, i in res.items()} for c, res in pod.items()}
                for k, pod in self._alloc.items()}


def parse_device_flag(text: str) -> tuple[str, tuple[str, ...]]:
    """`RESOURCE=PATH[,PATH...]` (the --device flag) -> (resource, paths)."""
    resource, sep, paths = text.partition("=")
    items = tuple(p.strip() for p in paths.split(",") if p.strip())
    if not sep or not resource or not items:
        raise ValueError(f"device {text!r} must be RESOURCE=PATH[,PATH...]")
    return resource, items
