"""Turn a ContainerSpec plus an image config into an OCI runtime ``config.json``.

Pure functions, no I/O except reading ``/etc/passwd`` of the image rootfs, so
the mapping from spec to OCI (namespaces, limits, process) is easy to test
and to read in one place.

Choices (see docs/runtime.md): pid, ipc, uts and mount namespaces are
private (pid and ipc are the host's when asked: hostPID / hostIPC, and then
``/dev/shm`` is the host's too); the network namespace is the pod's (``ContainerSpec.netns``) or the
host's; a user namespace maps the pod's root to an unprivileged host range
when asked (``idmap``). Hardening by default (``Security``): containerd's 14
default capabilities, the default seccomp profile (``seccomp.py``),
no_new_privileges, masked and read-only ``/proc`` and ``/sys`` paths, a device
cgroup that denies all but the standard nodes. ``privileged`` lifts all of it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecore.runtime.errors import ContainerStartError, InvalidSpec
from edgecore.runtime.images import ImageConfig
from edgecore.runtime.seccomp import default_profile
from edgecore.runtime.types import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    ContainerSpec,
    Security,
    parse_device,
)

__all__ = [
    "ANNOTATION_DIGEST",
    "ANNOTATION_IMAGE",
    "ANNOTATION_NAME",
    "HostDevice",
    "build_oci_config",
    "capability_sets",
    "host_capabilities",
    "host_device_nodes",
    "resolve_devices",
]

ANNOTATION_NAME = "io.edgefed.container.name"
ANNOTATION_IMAGE = "io.edgefed.container.image"
ANNOTATION_DIGEST = "io.edgefed.container.image-digest"

CPU_PERIOD_US = 100_000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_MASKED = [
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/fs/selinux", "/sys/dev/block",
    "/sys/devices/virtual/powercap",
]  # fmt: skip
_READONLY = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]  # fmt: skip

# (type, major, minor) of the devices every container gets.
_DEVICES = [("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9), ("c", 5, 0),
            ("c", 5, 2), ("c", 136, -1)]  # fmt: skip


@dataclass(frozen=True)
class HostDevice:
    """A host device node as the OCI spec needs it (``linux.devices`` entry)."""

    path: str  # inside the container
    type: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int


def resolve_devices(entries: Sequence[str]) -> list[HostDevice]:
    """``os.stat`` each host device node of ``ContainerSpec.devices``.

    A missing node raises :class:`ContainerStartError` (temporary: a USB
    accelerator may be plugged in later); a path that is not a character or
    block device raises :class:`InvalidSpec`.
    """
    out = []
    for entry in entries:
        host, inside = parse_device(entry)
        try:
            st = os.stat(host)
        except FileNotFoundError as exc:
            raise ContainerStartError(f"device {host} does not exist on this node") from exc
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise InvalidSpec(f"ContainerSpec.devices: {host} is not a device node")
        out.append(
            HostDevice(
                path=inside, type=kind, major=os.major(st.st_rdev), minor=os.minor(st.st_rdev),
                file_mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
            )
        )  # fmt: skip
    return out


def host_device_nodes(dev: Path = Path("/dev")) -> list[HostDevice]:
    """Every character and block device under ``dev`` (what a privileged container gets).

    ``pts``, ``shm`` and ``mqueue`` are skipped: the container has its own.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(dev):
        if dirpath == str(dev):
            dirnames[:] = [d for d in dirnames if d not in ("pts", "shm", "mqueue")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out.append(HostDevice(
                    path=path, type="c" if stat.S_ISCHR(st.st_mode) else "b",
                    major=os.major(st.st_rdev), minor=os.minor(st.st_rdev),
                    file_mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid))
    return out


def host_capabilities(status: str | None = None) -> tuple[str, ...]:
    """The capabilities in this process's bounding set (``CapBnd`` of /proc/self/status):
    "all capabilities" for a privileged container, as a container cannot get more."""
    if status is None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return ALL_CAPABILITIES
    for line in status.splitlines():
        if line.startswith("CapBnd:"):
            bits = int(line.split()[1], 16)
            return tuple(c for i, c in enumerate(ALL_CAPABILITIES) if bits >> i & 1)
    return ALL_CAPABILITIES


def capability_sets(sec: Security, uid: int, *,
                    available: Sequence[str] = ALL_CAPABILITIES) -> dict[str, list[str]]:
    """The OCI ``process.capabilities`` of a container.

    Kubernetes semantics: start from the default 14 (all of them if privileged),
    remove ``drop`` (``ALL``: every one), then add ``add`` (``ALL``: every one).
    "All" means all of ``available`` (the agent's own bounding set). As in
    Docker, a non-root user keeps the bounding set but gets no effective or
    permitted capabilities.
    """
    if sec.privileged or "ALL" in sec.capabilities_add:
        caps = list(available)
    else:
        caps = [] if "ALL" in sec.capabilities_drop else [
            c for c in DEFAULT_CAPABILITIES if c not in sec.capabilities_drop]
        caps += [c for c in sec.capabilities_add if c not in caps]
    active = list(caps) if uid == 0 else []
    return {"bounding": caps, "effective": active, "permitted": list(active)}


def _device_rule(kind: str, major: int, minor: int) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": kind, "major": major, "access": "rwm"}
    if minor >= 0:  # an absent minor is the wildcard
        rule["minor"] = minor
    return rule


def _lookup(path: Path, name: str, field: int) -> int | None:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":")
        if len(parts) > field and parts[0] == name and parts[field].isdigit():
            return int(parts[field])
    return None


def resolve_user(user: str, rootfs: Path) -> tuple[int, int]:
    """Image ``User`` (``""``, ``uid``, ``name``, ``uid:gid``, ``name:group``) -> (uid, gid)."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    if name.isdigit():
        uid = int(name)
        gid_default = _lookup_gid_of_uid(rootfs, uid)
    else:
        found = _lookup(rootfs / "etc/passwd", name, 2)
        if found is None:
            raise InvalidSpec(f"image user {name!r} is not in the image's /etc/passwd")
        uid = found
        gid_default = _lookup(rootfs / "etc/passwd", name, 3) or 0
    if not group:
        return uid, gid_default
    if group.isdigit():
        return uid, int(group)
    gid = _lookup(rootfs / "etc/group", group, 2)
    if gid is None:
        raise InvalidSpec(f"image group {group!r} is not in the image's /etc/group")
    return uid, gid


def _lookup_gid_of_uid(rootfs: Path, uid: int) -> int:
    try:
        lines = (rootfs / "etc/passwd").read_text(errors="replace").splitlines()
    except OSError:
        return 0
    for line in lines:
        parts = line.split(":")
        if len(parts) > 3 and parts[2] == str(uid) and parts[3].isdigit():
            return int(parts[3])
    return 0


def process_args(spec: ContainerSpec, image: ImageConfig) -> list[str]:
    """Kubernetes rules: command replaces Entrypoint, args replace Cmd."""
    if spec.command:
        argv = [*spec.command, *spec.args]
    elif spec.args:
        argv = [*image.entrypoint, *spec.args]
    else:
        argv = [*image.entrypoint, *image.cmd]
    if not argv:
        raise InvalidSpec(
            f"container {spec.name!r}: neither the spec nor image {spec.image!r} "
            "gives a command to run"
        )
    return argv


def merge_env(image_env: tuple[str, ...], env: Mapping[str, str], hostname: str) -> list[str]:
    merged: dict[str, str] = {"PATH": DEFAULT_PATH}
    for item in image_env:
        key, _, value = item.partition("=")
        merged[key] = value
    merged["HOSTNAME"] = hostname
    merged.update(env)
    return [f"{k}={v}" for k, v in merged.items()]


def build_oci_config(
    *,
    spec: ContainerSpec,
    image: ImageConfig,
    digest: str,
    rootfs: Path,
    cgroups_path: str,
    swap_accounting: bool,
    host_files: tuple[str, ...] = ("/etc/resolv.conf", "/etc/hosts"),
    devices: Sequence[HostDevice] = (),
    idmap: tuple[int, int] | None = None,
    machine: str | None = None,
) -> dict[str, Any]:
    """The OCI runtime config for ``spec``; ``rootfs`` is only read for user lookup.

    ``devices`` (from :func:`resolve_devices`; for a privileged container also
    :func:`host_device_nodes`) are created in the container and allowed, each by
    its exact type/major/minor, in the device cgroup (privileged: every device).
    ``idmap`` = (first host id, count) puts the container in a user namespace
    whose ids 0..count-1 are those host ids (uid and gid alike); the rootfs
    must then be owned by the mapped ids (crun.py mounts it idmapped).
    ``machine`` picks the seccomp profile's architecture (default: this host).
    Raises :class:`InvalidSpec` when ``run_as_non_root`` meets uid 0.
    """
    sec = spec.security
    uid, gid = resolve_user(spec.user if spec.user is not None else image.user, rootfs)
    if spec.user is None and spec.group is not None:
        gid = spec.group  # runAsGroup alone: the image's user, this group
    if sec.run_as_non_root and uid == 0:
        raise InvalidSpec(
            f"container {spec.name!r} has runAsNonRoot and its user is root (uid 0): "
            "set runAsUser or use an image with a non-root USER")
    groups = [g for g in spec.supplemental_groups if g != gid]
    if idmap is not None and not all(i < idmap[1] for i in (uid, gid, *groups)):
        raise InvalidSpec(
            f"container {spec.name!r}: user {uid}:{gid} (groups {groups}) is outside the "
            "pod's user "
            f"namespace (ids 0..{idmap[1] - 1})")
    hostname = spec.name
    device_rules = ([{"allow": True, "access": "rwm"}] if sec.privileged else
                    [{"allow": False, "access": "rwm"}]
                    + [_device_rule(t, ma, mi) for t, ma, mi in _DEVICES]
                    + [_device_rule(d.type, d.major, d.minor) for d in devices])
    resources: dict[str, Any] = {"devices": device_rules}
    if spec.memory_limit_bytes is not None:
        resources["memory"] = {"limit": spec.memory_limit_bytes}
        if swap_accounting:
            # limit+swap == limit: no swap, so the OOM killer acts at the limit.
            resources["memory"]["swap"] = spec.memory_limit_bytes
    if spec.cpu_limit_millis is not None:
        resources["cpu"] = {
            "quota": spec.cpu_limit_millis * CPU_PERIOD_US // 1000,
            "period": CPU_PERIOD_US,
        }
    if spec.pids_limit is not None:
        resources["pids"] = {"limit": spec.pids_limit}

    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
         "options": ["rbind", "nosuid", "noexec", "nodev"]} if spec.host_ipc else
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *([] if sec.privileged else ["ro"])]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
    ]  # fmt: skip
    # The container resolves names like the host does (its own netns: still the host's
    # resolvers, reached through NAT).
    mounts += [
        {
            "destination": f,
            "type": "bind",
            "source": f,
            "options": ["rbind", "ro", "nosuid", "nodev"],
        }
        for f in host_files
        if Path(f).exists()
    ]
    # Spec mounts come last so they may sit on top of the defaults (e.g. under /tmp).
    mounts += [
        {
            "destination": m.destination,
            "type": "bind",
            "source": str(m.source),
            "options": ["rbind", m.propagation, *(["ro"] if m.read_only else [])],
        }
        for m in spec.mounts
    ]
    shared = {"pid"} if spec.host_pid else set()
    shared |= {"ipc"} if spec.host_ipc else set()
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")
                                        if t not in shared]
    if spec.netns == "private":
        namespaces.append({"type": "network"})
    elif spec.netns is not None:
        namespaces.append({"type": "network", "path": spec.netns})
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": cgroups_path,
        "devices": [
            {
                "path": d.path,
                "type": d.type,
                "major": d.major,
                "minor": d.minor,
                "fileMode": d.file_mode,
                "uid": d.uid,
                "gid": d.gid,
            }
            for d in devices
        ],
        "resources": resources,
    }
    if spec.sysctls:
        linux["sysctl"] = dict(spec.sysctls)
    # As Kubernetes' CRI does: a propagating bind needs the container's root to propagate
    # too (else crun makes the whole tree private first and the bind's source with it).
    kinds = {m.propagation for m in spec.mounts}
    if "rshared" in kinds:
        linux["rootfsPropagation"] = "rshared"
    elif "rslave" in kinds:
        linux["rootfsPropagation"] = "rslave"
    if not sec.privileged:
        if not sec.proc_unmasked:
            linux["maskedPaths"] = list(_MASKED)
            linux["readonlyPaths"] = list(_READONLY)
        if sec.seccomp == "RuntimeDefault":
            linux["seccomp"] = default_profile(machine)
        elif sec.seccomp == "Localhost" and sec.seccomp_profile is not None:
            linux["seccomp"] = json.loads(sec.seccomp_profile)
    if idmap is not None:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": idmap[0], "size": idmap[1]}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": idmap[0], "size": idmap[1]}]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, **({"additionalGids": groups} if groups else {})},
            "args": process_args(spec, image),
            "env": merge_env(image.env, spec.env, hostname),
            "cwd": spec.working_dir or image.working_dir or "/",
            "capabilities": capability_sets(sec, uid, available=host_capabilities()),
            "noNewPrivileges": sec.no_new_privileges and not sec.privileged,
        },
        "root": {"path": "rootfs", "readonly": sec.read_only_rootfs},
        "hostname": hostname,
        "mounts": mounts,
        "annotations": {
            **spec.annotations,
            ANNOTATION_NAME: spec.name,
            ANNOTATION_IMAGE: spec.image,
            ANNOTATION_DIGEST: digest,
        },
        "linux": linux,
    }
