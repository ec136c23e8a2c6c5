"""What the reconciler remembers per pod across agent restarts (stored in the cache).

The runtime tells us what is running and how things exited; it cannot tell us how
many times we restarted a container or when the next restart is allowed. Those
live here, so a CrashLoopBackOff schedule survives an agent restart instead of
turning into a restart storm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class ContainerRecord:
    restarts: int = 0  # Kubernetes restartCount
    failures: int = 0  # consecutive crashes / failed starts: drives the backoff
    next_start_at: float = 0.0  # wall clock; no (re)start before this
    seen_exit: str | None = None  # identity of the last exit already counted
    completed: bool = False  # terminated and the restart policy says stay down
    running_since: float | None = None  # when we last started it (stable across passes)
    exit_code: int | None = None  # last termination
    exit_reason: str | None = None
    finished_at: float | None = None
    waiting_reason: str | None = None  # why it is not running now (start failure)
    waiting_message: str | None = None
    exit_message: str | None = None  # e.g. "Unhealthy: liveness probe failed 3 times: ..."
    kill_message: str | None = None  # why we stopped it, until its exit is observed
    last_started_at: float | None = None  # start of the instance that last exited

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContainerRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class PodRecord:
    revision: str
    containers: dict[str, ContainerRecord] = field(default_factory=dict)
    uid: str | None = None
    """The uid of the pod object these counts belong to (None: not known, e.g. a record
    written before entries carried uids): another uid is another pod, counted afresh."""

    def container(self, name: str) -> ContainerRecord:
        return self.containers.setdefault(name, ContainerRecord())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"revision": self.revision, "containers": {
            n: asdict(c) for n, c in self.containers.items()}}
        if self.uid is not None:
            out["uid"] = self.uid
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PodRecord:
        uid = d.get("uid")
        return cls(revision=str(d.get("revision", "")),
                   containers={n: ContainerRecord.from_dict(c)
                               for n, c in (d.get("containers") or {}).items()},
                   uid=uid if isinstance(uid, str) else None)
