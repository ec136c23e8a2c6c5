"""The agent's upgrade task: follow the desired `agent/-/release` entry (proposal 0006).

`Upgrader.run()` works until cancelled, and ends the agent on purpose by raising
`RestartRequested` once a trial is prepared (`edgecore run` then starts the launcher,
which runs the trial: `edgecore.upgrade.launcher`).

For a new entry (another version or another `upgrade` name) it:
1. refuses at once what it can (malformed entry, no trusted release key, a version
   without an image that this node does not hold) with status `Failed`;
2. `Downloading`: pulls the release image through the agent's image store (policy
   Always, with the registry credentials of `release_pull_secret` if any) and reads
   `/release/release.json` and `/release/bundle.tar.gz` from it;
3. `Verifying`: `shared.release.verify` (trusted keys, asked version, digest,
   signature) and unpacks into a staging directory, then into `slots/<version>/`;
   any refusal is `Failed` with the reason, and the request is not tried again;
4. `Restarting`: writes the trial into boot.json (deadline from the entry) and raises
   `RestartRequested`.

In a trial (the launcher says so through the environment) it first commits: once
`healthy()` holds (connected, the first reconcile pass done, a report of this process
acked by the cloud) it sets `active` to its version and clears the trial in ONE
boot.json write, with status `Healthy`, and keeps only its own slot and the previous
one.

The status is kept in boot.json (so it outlives restarts and rollbacks) and reported
as `agentUpgrade` beside `agentVersion` in the node status; `on_status` asks the
reporter to send it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgecore.errors import UpgradeFailed
from edgecore.runtime.errors import ContainerRuntimeError
from edgecore.runtime.registry_auth import RegistryCredentials, credentials_for
from edgecore.runtime.types import PullPolicy
from edgecore.upgrade import RestartRequested
from edgecore.upgrade.slots import BootState, Slots, Trial
from shared import entries
from shared.delta import EdgeDesired
from shared.errors import ObjectError, ReleaseError

if TYPE_CHECKING:
    from shared import release

log = logging.getLogger(__name__)


class ReleaseImages(Protocol):
    """What the upgrader needs of the image store (`edgecore.runtime.images.ImageStore`)."""

    async def pull(self, image: str, *, insecure: bool | None = None,
                   policy: PullPolicy = "IfNotPresent",
                   credentials: RegistryCredentials | None = None) -> str: ...

    async def rootfs(self, image: str) -> tuple[str, Path]: ...


@dataclass(frozen=True)
class Fetched:
    manifest: release.Release
    bundle: bytes


async def fetch_release(images: ReleaseImages, image: str, *,
                        credentials: RegistryCredentials | None) -> Fetched:
    """Pull the release image and read its manifest and bundle; UpgradeFailed with the
    cause (the pull error, or the file the image lacks)."""
    from shared import release  # here: the agent holds it only while it upgrades

    try:
        await images.pull(image, policy="Always", credentials=credentials)
        _, root = await images.rootfs(image)
    except ContainerRuntimeError as exc:
        raise UpgradeFailed(f"pull of release image {image} failed: {exc}") from exc
    where = root / release.RELEASE_DIR

    def read() -> Fetched:
        try:
            bundle = (where / release.BUNDLE).read_bytes()
        except OSError as exc:
            raise UpgradeFailed(f"release image {image} has no /{release.RELEASE_DIR}/"
                                f"{release.BUNDLE}: {exc.strerror}") from exc
        try:
            manifest = release.read_manifest(where / release.MANIFEST)
        except ReleaseError as exc:
            raise UpgradeFailed(f"release image {image}: {exc}") from exc
        return Fetched(manifest, bundle)

    return await asyncio.to_thread(read)


class Upgrader:
    """Follows `agent/-/release` for one agent; see the module docstring."""

    def __init__(
        self, *, slots: Slots, version: str, trial: bool,
        desired: Callable[[], EdgeDesired], images: ReleaseImages | None,
        trusted: Sequence[bytes], healthy: Callable[[], bool],
        on_status: Callable[[], None], pull_secret: Path | None = None,
        check_s: float = 2.0, clock: Callable[[], float] = time.time,
    ) -> None:
        self.slots = slots
        self.version = version
        self.trial = trial
        self.desired = desired
        self.images = images
        self.trusted = tuple(trusted)
        self.healthy = healthy
        self.on_status = on_status
        self.pull_secret = pull_secret
        self.check_s = check_s
        self.clock = clock
        self.state: BootState = slots.read()
        self._handled: Any = None  # the entry value last acted on

    # -- status ---------------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        """`agentUpgrade` for the node status, or None if no upgrade was ever asked."""
        st = self.state.status
        if not st:
            return None
        return entries.agent_upgrade_value(entries.AgentUpgradeReport(
            version=str(st.get("version", "")), phase=str(st.get("phase", "")),
            message=str(st.get("message") or ""), previous=st.get("previous")))

    def _set_status(self, version: str, phase: str, message: str, *, upgrade: str,
                    previous: str | None) -> None:
        self.state.status = {"version": version, "phase": phase, "message": message,
                             "previous": previous, "upgrade": upgrade}
        self.slots.write(self.state)
        log.log(logging.ERROR if phase == "Failed" else logging.INFO,
                "agent upgrade to %s: %s%s", version, phase, f": {message}" if message else "")
        self.on_status()

    # -- the task -------------------------------------------------------------------

    async def run(self) -> None:
        if self.trial:
            await self._commit_when_healthy()
        while True:
            value = self.desired().items.get(entries.AGENT_RELEASE_KEY)
            if value is not None and value != self._handled:
                self._handled = value
                await self.handle(value)
            await asyncio.sleep(self.check_s)

    async def handle(self, value: Any) -> None:
        """Act on one `agent/-/release` value (raises RestartRequested for a trial)."""
        try:
            rel = entries.parse_agent_release(entries.AGENT_RELEASE_KEY, value)
        except ObjectError as exc:
            version = value.get("version") if isinstance(value, dict) else None
            upgrade = value.get("upgrade") if isinstance(value, dict) else None
            self._set_status(str(version or "?"), "Failed", str(exc),
                             upgrade=str(upgrade or ""), previous=self.version)
            return
        if rel.version == self.version:
            st = self.state.status or {}
            if st.get("version") != rel.version or st.get("phase") != "Healthy":
                # e.g. the cloud sends a node that rolled back to the version it runs:
                # Healthy, and the earlier outcome stays readable in the message
                earlier = (f" (before: {st.get('version')} {st.get('phase')}: "
                           f"{st.get('message')})" if st.get("phase") in
                           entries.UPGRADE_TERMINAL_FAILURES else "")
                self._set_status(rel.version, "Healthy", f"running {rel.version}{earlier}",
                                 upgrade=rel.upgrade, previous=st.get("previous"))
            return
        if self.state.is_refused(rel.version, rel.upgrade):
            log.info("agent release %s (%s) failed here before; not trying it again until "
                     "the request changes", rel.version, rel.upgrade)
            return
        try:
            slot = await self._install(rel)
        except (UpgradeFailed, ReleaseError) as exc:
            self.state.refuse(rel.version, rel.upgrade)
            self._set_status(rel.version, "Failed", str(exc), upgrade=rel.upgrade,
                             previous=self.version)
            return
        self._prepare_trial(rel, slot)

    async def _install(self, rel: entries.AgentRelease) -> str | None:
        """Make `rel` runnable here; returns its slot (None: the installed package)."""
        if rel.image is None:
            if rel.version == self.state.base:
                return None
            if self.slots.has(rel.version):
                return rel.version
            held = [self.state.base, *self.slots.versions()]
            raise UpgradeFailed(f"version {rel.version} is not held on this node (it holds "
                                f"{', '.join(held)}) and the request names no image")
        if not self.trusted:
            raise ReleaseError("this node trusts no release key (re-join, or run with "
                               "--release-key FILE)", reason="nokeys")
        if self.images is None:
            raise UpgradeFailed("this agent's runtime has no image store to pull releases")
        self._set_status(rel.version, "Downloading", f"pulling {rel.image}",
                         upgrade=rel.upgrade, previous=self.version)
        fetched = await fetch_release(self.images, rel.image,
                                      credentials=await asyncio.to_thread(
                                          self._credentials, rel.image))
        self._set_status(rel.version, "Verifying", f"sha256:{fetched.manifest.sha256}",
                         upgrade=rel.upgrade, previous=self.version)
        from shared import release

        release.verify(fetched.manifest, fetched.bundle, trusted=self.trusted,
                       version=rel.version)
        await asyncio.to_thread(self._unpack, fetched.bundle, rel.version)
        return rel.version

    def _unpack(self, bundle: bytes, version: str) -> None:
        from shared import release

        staged = self.slots.staging()
        try:
            release.unpack(bundle, staged, version=version)
            _compile(staged, version)
            self.slots.install(staged, version)
        finally:
            self.slots.prune(self._keep(version))

    def _keep(self, new: str | None) -> set[str]:
        """Slots to keep: the running one and `new` (at most two)."""
        return {v for v in (self.state.active, new) if v is not None}

    def _credentials(self, image: str) -> RegistryCredentials | None:
        path = self.pull_secret or self.slots.dir / "auth.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UpgradeFailed(f"cannot read the release pull secret {path}: {exc}") from exc
        return credentials_for(image, [{".dockerconfigjson": data}])

    def _prepare_trial(self, rel: entries.AgentRelease, slot: str | None) -> None:
        self.state.trial = Trial(
            version=rel.version, slot=slot, deadline_s=rel.deadline,
            deadline_ts=self.clock() + rel.deadline, upgrade=rel.upgrade,
            previous=self.version)
        self._set_status(rel.version, "Restarting",
                         f"restarting into {rel.version}; it has {rel.deadline} s to commit",
                         upgrade=rel.upgrade, previous=self.version)
        raise RestartRequested(f"restarting into agent release {rel.version}")

    async def _commit_when_healthy(self) -> None:
        state = self.slots.read()
        trial = state.trial
        if trial is None or trial.version != self.version:
            log.warning("started as a trial of %s, but boot.json has no such trial; "
                        "running without committing", self.version)
            return
        start = self.clock()
        while not self.healthy():
            await asyncio.sleep(0.5)
        state = self.slots.read()
        if state.trial is None or state.trial.version != self.version:
            return  # the launcher gave up on us meanwhile
        previous_slot = state.active
        state.active = trial.slot
        state.trial = None
        state.status = {"version": self.version, "phase": "Healthy",
                        "message": f"committed {self.clock() - start:.1f} s after start",
                        "previous": trial.previous, "upgrade": trial.upgrade}
        self.slots.write(state)
        self.state = state
        with contextlib.suppress(OSError):
            self.slots.prune({v for v in (trial.slot, previous_slot) if v is not None})
        log.info("agent release %s committed (previous %s)", self.version, trial.previous)
        self.on_status()


def _compile(root: Path, version: str) -> None:
    """Compile the release's modules to bytecode beside them, as pip does at install:
    an agent that imports from source compiles at every start, which costs CPU and
    leaves the compiler's memory in its heap (issue 16: 1-2 MiB of RSS). At both levels
    the release may run at: `.opt-2.pyc` for `edgecore run` (it restarts itself under
    -OO) and plain `.pyc` (`--plain-python`, or a release from before that). A file that
    does not compile is logged and left to the trial, which then fails and is rolled
    back with the error it printed."""
    import py_compile

    failed = []
    for path in sorted(root.rglob("*.py")):
        try:
            for level in (0, 2):
                py_compile.compile(str(path), doraise=True, optimize=level)
        except py_compile.PyCompileError as exc:
            failed.append(f"{path.relative_to(root)}: {exc.exc_type_name}: {exc.exc_value}")
    if failed:
        log.warning("agent release %s: %d module(s) do not compile: %s", version, len(failed),
                    "; ".join(failed)[:1000])
