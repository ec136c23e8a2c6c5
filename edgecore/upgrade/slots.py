"""The agent's release slots and `boot.json`: what runs next, what is on trial.

Layout under `STATE_DIR/agent/`:

    slots/<version>/edgecore/, shared/, release.json   an unpacked release
    boot.json                                          the boot state below

`boot.json` = {
  "base":    the version of the installed package (what runs with no slot active),
  "active":  the committed version (a slot), or null: the installed package,
  "trial":   {"version", "slot" (null: the installed package), "deadline_s",
              "deadline_ts", "starts", "upgrade", "previous"} or null,
  "status":  the `agentUpgrade` this node reports ({version, phase, message,
              previous}) plus "upgrade" (the AgentUpgrade that asked), or null,
  "refused": [{"version", "upgrade"}]: requests that Failed or RolledBack; not tried
             again until the desired entry names another version or upgrade.
}

Every write goes to a temporary file, is fsynced and renamed over the old one, so a
power cut leaves either the old or the new state. Only this module reads or writes
these files; it imports nothing heavy, because the launcher reads it before the agent
is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

BOOT = "boot.json"
SLOTS = "slots"
KEEP_SLOTS = 2
"""Slots kept: the running version and the previous one (the rollback target)."""


class _Record:
    """Equality and repr by attribute, as a dataclass would give. Plain classes rather
    than dataclasses: `dataclasses` imports `inspect` and `ast` (1.1 MiB of RSS), and
    the launcher, which reads this module, runs before the agent and stays beside a
    trial agent for the trial's lifetime (issue 16)."""

    __slots__ = ()
    FIELDS: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, f) == getattr(other, f) for f in self.FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass's

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.FIELDS)
        return f"{type(self).__name__}({inner})"


class Trial(_Record):
    """A version started on probation: it must commit before `deadline_ts`.

    `slot`: the slot to run (None: the installed package, a switch back to the base).
    `previous`: the version that asked for the trial (where a rollback goes).
    `starts`: times the launcher started it: a second start means the first one never
    committed and never came back to its launcher (power cut, launcher killed)."""

    FIELDS = ("version", "slot", "deadline_s", "deadline_ts", "upgrade", "previous", "starts")
    __slots__ = ("deadline_s", "deadline_ts", "previous", "slot", "starts", "upgrade",
                 "version")

    def __init__(self, *, version: str, slot: str | None, deadline_s: int,
                 deadline_ts: float, upgrade: str, previous: str, starts: int = 0) -> None:
        self.version = version
        self.slot = slot
        self.deadline_s = deadline_s
        self.deadline_ts = deadline_ts
        self.upgrade = upgrade
        self.previous = previous
        self.starts = starts

    def dump(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.FIELDS}


class BootState(_Record):
    FIELDS = ("base", "active", "trial", "status", "refused")
    __slots__ = ("active", "base", "refused", "status", "trial")

    def __init__(self, *, base: str, active: str | None = None, trial: Trial | None = None,
                 status: dict[str, Any] | None = None,
                 refused: list[dict[str, str]] | None = None) -> None:
        self.base = base
        self.active = active
        self.trial = trial
        self.status = status
        self.refused: list[dict[str, str]] = [] if refused is None else refused

    def running(self) -> str:
        """The committed version: the active slot's, else the base's."""
        return self.active or self.base

    def is_refused(self, version: str, upgrade: str) -> bool:
        return {"version": version, "upgrade": upgrade} in self.refused

    def refuse(self, version: str, upgrade: str) -> None:
        if not self.is_refused(version, upgrade):
            self.refused = [*self.refused[-15:], {"version": version, "upgrade": upgrade}]

    def dump(self) -> dict[str, Any]:
        return {"base": self.base, "active": self.active,
                "trial": None if self.trial is None else self.trial.dump(),
                "status": self.status, "refused": self.refused}

    @classmethod
    def parse(cls, raw: Any, *, base: str) -> BootState:
        if not isinstance(raw, dict):
            raise ValueError("boot state must be a JSON object")
        trial = raw.get("trial")
        status = raw.get("status")
        refused = raw.get("refused") or []
        active = raw.get("active")
        if active is not None and not isinstance(active, str):
            raise ValueError("'active' must be text or null")
        return cls(base=base, active=active,
                   trial=Trial(**trial) if isinstance(trial, dict) else None,
                   status=status if isinstance(status, dict) else None,
                   refused=[r for r in refused if isinstance(r, dict)])


class Slots:
    """The release slots and boot state of one agent state directory."""

    def __init__(self, agent_dir: Path, *, base: str) -> None:
        self.dir = agent_dir
        self.slots = agent_dir / SLOTS
        self.boot_file = agent_dir / BOOT
        self.base = base

    def path(self, version: str) -> Path:
        return self.slots / version

    def has(self, version: str) -> bool:
        return (self.path(version) / "edgecore" / "__init__.py").is_file()

    def versions(self) -> list[str]:
        """Installed slots, oldest first (by modification time)."""
        if not self.slots.is_dir():
            return []
        found = [p for p in self.slots.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime)]

    def read(self) -> BootState:
        """The boot state; a fresh one (base only) if there is none. A corrupt file is
        kept aside as `boot.json.corrupt` and a fresh state returned: the installed
        package always runs."""
        try:
            raw = json.loads(self.boot_file.read_text())
            return BootState.parse(raw, base=self.base)
        except FileNotFoundError:
            return BootState(base=self.base)
        except (OSError, ValueError, TypeError):
            with contextlib.suppress(OSError):
                os.replace(self.boot_file, self.boot_file.with_name(BOOT + ".corrupt"))
            return BootState(base=self.base)

    def recorded_base(self) -> str | None:
        """The installed version boot.json was last written by (None: unknown)."""
        try:
            raw = json.loads(self.boot_file.read_text())
        except (OSError, ValueError):
            return None
        base = raw.get("base") if isinstance(raw, dict) else None
        return base if isinstance(base, str) else None

    def write(self, state: BootState) -> None:
        """Replace boot.json atomically and durably."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        import tempfile  # here: the agent's process holds no tempfile until an upgrade

        data = json.dumps(state.dump(), indent=1, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".boot-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.boot_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def staging(self) -> Path:
        """A new empty-named staging path beside the slots (not created)."""
        import tempfile

        self.slots.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(dir=self.slots, prefix=".new-")) / "x"

    def install(self, staged: Path, version: str) -> Path:
        """Move an unpacked release (`staged`, from `staging()`) into its slot, replacing
        an older copy of the same version; returns the slot path."""
        target = self.path(version)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
        with contextlib.suppress(OSError):
            staged.parent.rmdir()
        os.utime(target)
        return target

    def prune(self, keep: set[str]) -> list[str]:
        """Delete every slot not in `keep` (at most KEEP_SLOTS names) and stale staging
        directories; returns the versions removed."""
        removed = []
        for v in self.versions():
            if v not in keep:
                shutil.rmtree(self.path(v), ignore_errors=True)
                removed.append(v)
        if self.slots.is_dir():
            for p in self.slots.iterdir():
                if p.name.startswith(".new-"):
                    shutil.rmtree(p, ignore_errors=True)
        return removed
