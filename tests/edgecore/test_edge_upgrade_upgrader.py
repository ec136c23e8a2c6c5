"""edgecore.upgrade.upgrader: the agent's side of `agent/-/release`, with real release
bundles (shared.release, built from this checkout) served by a stand-in image store:
a good release is unpacked into its slot and a trial prepared; a bad digest, a bad
signature, an unknown key, a version mismatch, a node without keys and a failed pull
are refused (Failed, with the reason) and not tried again until the request changes;
a trial commits once healthy."""

from __future__ import annotations

import base64
import json
import logging
from importlib.util import cache_from_source
from pathlib import Path
from typing import Any

import pytest

from edgecore import __version__
from edgecore.runtime.errors import ImagePullError
from edgecore.runtime.registry_auth import RegistryCredentials
from edgecore.runtime.types import PullPolicy
from edgecore.upgrade import RestartRequested
from edgecore.upgrade.slots import BootState, Slots, Trial
from edgecore.upgrade.upgrader import Upgrader, _compile
from shared import entries, release
from shared.delta import EdgeDesired

ROOT = Path(__file__).resolve().parents[2]
KEY = entries.AGENT_RELEASE_KEY


class Images:
    """Image refs -> directories holding release/ (what the image's rootfs would)."""

    def __init__(self) -> None:
        self.roots: dict[str, Path] = {}
        self.pulls: list[tuple[str, str, RegistryCredentials | None]] = []

    async def pull(self, image: str, *, insecure: bool | None = None,
                   policy: PullPolicy = "IfNotPresent",
                   credentials: RegistryCredentials | None = None) -> str:
        self.pulls.append((image, policy, credentials))
        if image not in self.roots:
            raise ImagePullError(f"pull {image}: manifest unknown")
        return "sha256:" + "0" * 64

    async def rootfs(self, image: str) -> tuple[str, Path]:
        return "sha256:" + "0" * 64, self.roots[image]


@pytest.fixture(scope="module")
def bundle() -> bytes:
    return release.build_bundle(ROOT, version="2.0")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("keys")
    return {"good": release.generate_key(d / "good"), "other": release.generate_key(d / "o")}


def pub(key: Any) -> bytes:
    return release.parse_public_key(release.public_key_b64(key))


def publish(images: Images, tmp: Path, ref: str, bundle: bytes, key: Any, *,
            version: str = "2.0", manifest: dict[str, str] | None = None) -> None:
    root = tmp / "images" / ref.replace("/", "_").replace(":", "_")
    (root / "release").mkdir(parents=True)
    (root / "release" / release.BUNDLE).write_bytes(bundle)
    digest = release.hashlib.sha256(bundle).hexdigest()
    doc = {"version": version, "sha256": digest,
           "signature": release.sign(key, version=version, sha256=digest)}
    doc.update(manifest or {})
    (root / "release" / release.MANIFEST).write_text(json.dumps(doc))
    images.roots[ref] = root


class Harness:
    def __init__(self, tmp: Path, *, trusted: list[bytes], trial: bool = False,
                 version: str = __version__) -> None:
        self.slots = Slots(tmp / "state" / "agent", base=__version__)
        self.images = Images()
        self.desired = EdgeDesired(epoch="e", gen=1, items={})
        self.healthy = False
        self.reports = 0

        def on_status() -> None:
            self.reports += 1

        self.make = lambda: Upgrader(
            slots=self.slots, version=version, trial=trial, desired=lambda: self.desired,
            images=self.images, trusted=trusted, healthy=lambda: self.healthy,
            on_status=on_status, check_s=0.01)

    def ask(self, version: str, image: str | None, upgrade: str | None = None) -> None:
        self.desired.items[KEY] = entries.agent_release_entry(
            version=version, image=image, upgrade=upgrade or f"agent-{version}", deadline=60)


async def test_a_good_release_is_installed_and_a_trial_prepared(
        tmp_path: Path, bundle: bytes, keys: dict[str, Any]) -> None:
    h = Harness(tmp_path, trusted=[pub(keys["other"]), pub(keys["good"])])
    publish(h.images, tmp_path, "reg/agent:2.0", bundle, keys["good"])
    h.ask("2.0", "reg/agent:2.0")
    up = h.make()
    with pytest.raises(RestartRequested, match=r"release 2\.0"):
        await up.handle(h.desired.items[KEY])
    assert h.images.pulls == [("reg/agent:2.0", "Always", None)]
    assert h.slots.has("2.0")
    assert (h.slots.path("2.0") / "shared/release.py").read_bytes() == (
        ROOT / "shared/release.py").read_bytes()
    # Compiled at install, as pip does, so the new agent does not compile at each start.
    for module in ("edgecore/agent.py", "edgecore/upgrade/launcher.py", "shared/codec.py"):
        assert Path(cache_from_source(str(h.slots.path("2.0") / module))).is_file(), module
    st = h.slots.read()
    assert st.trial is not None and st.trial.version == "2.0" and st.trial.slot == "2.0"
    assert st.trial.previous == __version__ and st.trial.deadline_s == 60
    assert up.status() == {"version": "2.0", "phase": "Restarting", "previous": __version__,
                           "message": "restarting into 2.0; it has 60 s to commit"}
    assert h.reports == 3  # Downloading, Verifying, Restarting


def _tampered(bundle: bytes) -> bytes:
    return bundle[:-1] + bytes([bundle[-1] ^ 1])


@pytest.mark.parametrize(("case", "reason"), [
    ("digest", "does not match the manifest"),
    ("signature", "verifies under none"),
    ("unknown-key", "verifies under none"),
    ("version", "not the '2.0' asked for"),
    ("inner-version", "says version '2.0' inside"),
    ("no-keys", "trusts no release key"),
    ("pull", "manifest unknown"),
    ("not-held", "is not held on this node"),
])
async def test_refusals_are_failed_with_the_reason_and_not_retried(
        tmp_path: Path, bundle: bytes, keys: dict[str, Any], case: str, reason: str) -> None:
    good = keys["good"]
    h = Harness(tmp_path, trusted=[] if case == "no-keys" else [pub(good)])
    ref = "reg/agent:2.0"
    version = "2.0"
    if case == "digest":
        publish(h.images, tmp_path, ref, bundle, good)
        (h.images.roots[ref] / "release" / release.BUNDLE).write_bytes(_tampered(bundle))
    elif case == "signature":
        sig = bytearray(64)
        publish(h.images, tmp_path, ref, bundle, good,
                manifest={"signature": base64.b64encode(bytes(sig)).decode()})
    elif case == "unknown-key":
        publish(h.images, tmp_path, ref, bundle, keys["other"])
    elif case == "version":
        publish(h.images, tmp_path, ref, bundle, good, version="2.1")
    elif case == "inner-version":
        version = "2.5"  # signed as 2.5, but the bundle inside says 2.0
        publish(h.images, tmp_path, ref, bundle, good, version="2.5")
    elif case == "no-keys":
        publish(h.images, tmp_path, ref, bundle, good)
    h.ask(version, None if case == "not-held" else ref)
    up = h.make()
    await up.handle(h.desired.items[KEY])  # no RestartRequested
    status = up.status()
    assert status is not None and status["phase"] == "Failed", status
    assert reason in status["message"], status["message"]
    assert status["version"] == version and status["previous"] == __version__
    st = h.slots.read()
    assert st.trial is None and not h.slots.has(version)
    assert not (h.slots.slots.exists() and any(h.slots.slots.iterdir()))  # no staging left
    # not retried for the same request, even by a new agent (the refusal is on disk)
    pulls = len(h.images.pulls)
    await h.make().handle(h.desired.items[KEY])
    assert len(h.images.pulls) == pulls
    assert h.make().status() == status
    # a new request (another upgrade name) is tried again
    if case == "version":
        publish(h.images, tmp_path, "reg/agent:2.0-fixed", bundle, good)
        h.ask("2.0", "reg/agent:2.0-fixed", upgrade="agent-2.0-again")
        with pytest.raises(RestartRequested):
            await h.make().handle(h.desired.items[KEY])


async def test_a_malformed_entry_is_failed_naming_the_field(tmp_path: Path) -> None:
    h = Harness(tmp_path, trusted=[])
    up = h.make()
    await up.handle({"version": "2.0", "image": "x", "upgrade": "u", "deadline": -1})
    status = up.status()
    assert status is not None and status["phase"] == "Failed"
    assert "deadline" in status["message"]


async def test_running_the_asked_version_is_healthy_and_a_held_version_needs_no_pull(
        tmp_path: Path, bundle: bytes, keys: dict[str, Any]) -> None:
    h = Harness(tmp_path, trusted=[pub(keys["good"])], version="2.0")
    h.slots.write(BootState(base=__version__, active="2.0"))
    h.ask("2.0", "reg/agent:2.0")
    up = h.make()
    await up.handle(h.desired.items[KEY])
    assert up.status() is not None and up.status()["phase"] == "Healthy"  # type: ignore[index]
    assert h.images.pulls == []
    # the cloud sends it back to the base (image None): a trial of the installed agent
    h.ask(__version__, None, upgrade="agent-2.0")
    with pytest.raises(RestartRequested):
        await up.handle(h.desired.items[KEY])
    trial = h.slots.read().trial
    assert trial is not None and trial.slot is None and trial.version == __version__
    assert h.images.pulls == []


async def test_a_trial_commits_once_healthy(tmp_path: Path, keys: dict[str, Any]) -> None:
    import asyncio

    h = Harness(tmp_path, trusted=[pub(keys["good"])], trial=True, version="2.0")
    for v in ("1.0", "1.5", "2.0"):
        (h.slots.path(v) / "edgecore").mkdir(parents=True)
        (h.slots.path(v) / "edgecore" / "__init__.py").write_text("")
    h.slots.write(BootState(base=__version__, active="1.5", trial=Trial(
        version="2.0", slot="2.0", deadline_s=60, deadline_ts=1e12, upgrade="agent-2.0",
        previous="1.5", starts=1)))
    task = asyncio.create_task(h.make().run())
    await asyncio.sleep(0.6)
    st = h.slots.read()
    assert st.trial is not None and st.active == "1.5"  # not healthy yet: no commit
    h.healthy = True
    for _ in range(50):
        await asyncio.sleep(0.1)
        if h.slots.read().trial is None:
            break
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    st = h.slots.read()
    assert st.trial is None and st.active == "2.0"
    assert st.status is not None and st.status["phase"] == "Healthy"
    assert st.status["previous"] == "1.5"
    assert sorted(h.slots.versions()) == ["1.5", "2.0"]  # at most two slots kept


async def test_sent_back_to_the_running_version_keeps_the_rollback_readable(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, trusted=[], version="1.0")
    h.slots.write(BootState(base=__version__, active="1.0", status={
        "version": "2.0", "phase": "RolledBack", "previous": "1.0", "upgrade": "agent-2.0",
        "message": "the new agent 2.0 exited with code 1 before it committed: boom"}))
    h.ask("1.0", None, upgrade="agent-2.0")
    up = h.make()
    await up.handle(h.desired.items[KEY])
    status = up.status()
    assert status is not None and status["phase"] == "Healthy" and status["version"] == "1.0"
    assert "before: 2.0 RolledBack" in status["message"] and "boom" in status["message"]


def test_a_failed_trials_message_puts_the_exception_first() -> None:
    from edgecore.upgrade.launcher import _stderr_summary

    lines = ["Traceback (most recent call last):", *[f'  File "x{i}.py"' for i in range(40)],
             "RuntimeError: boom"]
    text = _stderr_summary(lines, budget=200)
    assert text.startswith(": RuntimeError: boom (stderr: ")
    assert len(text) <= 200 and 'File "x39.py"' in text and "Traceback" not in text
    assert _stderr_summary([]) == ""


async def test_release_pulls_use_the_nodes_release_pull_secret(
        tmp_path: Path, bundle: bytes, keys: dict[str, Any]) -> None:
    h = Harness(tmp_path, trusted=[pub(keys["good"])])
    publish(h.images, tmp_path, "reg.example:5000/agent:2.0", bundle, keys["good"])
    h.slots.dir.mkdir(parents=True)
    (h.slots.dir / "auth.json").write_text(json.dumps({"auths": {"reg.example:5000": {
        "auth": base64.b64encode(b"ci:s3cret").decode()}}}))
    h.ask("2.0", "reg.example:5000/agent:2.0")
    with pytest.raises(RestartRequested):
        await h.make().handle(h.desired.items[KEY])
    (_, _, creds), = h.images.pulls
    assert creds is not None and (creds.registry, creds.username, creds.password) == (
        "reg.example:5000", "ci", "s3cret")
    assert "s3cret" not in json.dumps(h.slots.read().dump())  # never in the status


def test_a_module_that_does_not_compile_is_named_and_the_rest_compiled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "edgecore").mkdir()
    (tmp_path / "edgecore" / "good.py").write_text("X = 1\n")
    (tmp_path / "edgecore" / "bad.py").write_text("def f(:\n")
    with caplog.at_level(logging.WARNING, logger="edgecore.upgrade.upgrader"):
        _compile(tmp_path, "2.0")
    assert Path(cache_from_source(str(tmp_path / "edgecore" / "good.py"))).is_file()
    # and for `edgecore run`, which restarts itself under -OO
    assert Path(cache_from_source(str(tmp_path / "edgecore" / "good.py"),
                                  optimization=2)).is_file()
    assert not Path(cache_from_source(str(tmp_path / "edgecore" / "bad.py"))).exists()
    [warning] = [r.getMessage() for r in caplog.records]
    assert "agent release 2.0: 1 module(s) do not compile: edgecore/bad.py: SyntaxError" in (
        warning)
