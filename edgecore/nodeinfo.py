"""What this device is: capacity, architecture, OS, the node status we report first.

Read once at start from the host (os.cpu_count, /proc/meminfo, platform), unless
the settings override it (a device may want to keep headroom for itself).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgecore.config import AgentSettings
from edgecore.upgrade import running_version

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "i386": "386", "i686": "386", "riscv64": "riscv64"}


def go_arch(machine: str | None = None) -> str:
    """os.uname().machine in the GOARCH/OCI spelling images use (amd64, arm64, arm)."""
    m = (machine if machine is not None else os.uname().machine).lower()
    if m in _ARCH:
        return _ARCH[m]
    if m.startswith("arm"):
        return "arm"
    return m or "unknown"


def mem_total_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemTotal in bytes, or 0 if it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def node_status(
    settings: AgentSettings, *, accelerators: Mapping[str, int] | None = None,
    usage: Mapping[str, float] | None = None, upgrade: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The node_status of the first report after start (wire names, camelCase).

    `accelerators` (device count per resource name) join cpu, memory and pods in
    capacity and allocatable; `usage` is the newest telemetry ({"cpu": millicores,
    "memory": bytes}), if any; `upgrade` the `agentUpgrade` status of the last agent
    upgrade asked of this node (proposal 0006), if any. `agentVersion` is the release
    the agent runs from (its slot), else the installed package's version.
    """
    capacity = {
        "cpu": settings.capacity_cpu_millis or (os.cpu_count() or 1) * 1000,
        "memory": settings.capacity_memory_bytes or mem_total_bytes(),
        "pods": settings.capacity_pods,
        **(accelerators or {}),
    }
    out: dict[str, Any] = {
        "capacity": capacity,
        "allocatable": dict(capacity),  # no system reservation yet: allocatable = capacity
        "arch": go_arch(),
        "os": os.uname().sysname.lower() or "linux",
        "agentVersion": running_version(),
        "labels": dict(settings.labels),
        "heartbeat": settings.heartbeat_s,
    }
    if usage:
        out["usage"] = dict(usage)
    if upgrade:
        out["agentUpgrade"] = dict(upgrade)
    return out
