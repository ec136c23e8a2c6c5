"""Workload isolation in the OCI config the agent builds, on real crun containers.

Default hardening (seccomp mode 2, the default 14 capabilities, no_new_privileges,
user namespaces refused, masked /proc paths), securityContext fields (runAsNonRoot,
readOnlyRootFilesystem, capabilities add/drop, privileged, Unconfined) and
``hostUsers: false`` (a user namespace over an idmapped rootfs).
"""

# ruff: noqa: F811  (pytest fixtures imported from fixtures_runtime are parameters here)
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from edgecore.runtime import CrunRuntime, InvalidSpec
from edgecore.runtime.oci import capability_sets
from edgecore.runtime.seccomp import DENIED, default_profile
from edgecore.runtime.types import DEFAULT_CAPABILITIES, Security

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_runtime import (  # noqa: F401  (fixtures are used by name)
    SeededRegistry,
    runtime,
    seeded_registry,
    spec,
    stopped,
    wait_state,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# CapEff of the default set: the 14 bits of DEFAULT_CAPABILITIES.
_BITS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4,
         "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
         "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18,
         "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31}
DEFAULT_CAPEFF = f"{sum(1 << _BITS[c] for c in DEFAULT_CAPABILITIES):016x}"


async def output(rt: CrunRuntime, cid: str) -> str:
    await wait_state(rt, cid, stopped)
    return (await rt.logs(cid)).decode()


def test_profile_and_capability_sets_are_pure() -> None:
    prof = default_profile("x86_64")
    assert prof["architectures"] == ["SCMP_ARCH_X86_64"]
    names = prof["syscalls"][0]["names"]
    for call in ("keyctl", "mount", "umount2", "ptrace", "setns", "init_module", "bpf",
                 "clock_settime", "kexec_load", "reboot", "open_by_handle_at", "userfaultfd"):
        assert call in names
    arm = default_profile("arm64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64"]
    assert "umount" not in DENIED["aarch64"] and "iopl" not in DENIED["aarch64"]
    assert capability_sets(Security(), 0)["effective"] == list(DEFAULT_CAPABILITIES)
    caps = capability_sets(Security(capabilities_drop=("ALL",),
                                    capabilities_add=("NET_BIND_SERVICE",)), 0)
    assert caps["bounding"] == caps["effective"] == ["CAP_NET_BIND_SERVICE"]
    assert capability_sets(Security(), 1000)["effective"] == []
    assert len(capability_sets(Security(privileged=True), 0)["bounding"]) == 41
    with pytest.raises(InvalidSpec, match="NOT_A_CAP"):
        Security(capabilities_add=("NOT_A_CAP",))
    with pytest.raises(InvalidSpec, match="Localhost"):
        Security(seccomp="Localhost")  # type: ignore[arg-type]


async def test_default_container_is_confined(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    script = ("grep -E '^(Seccomp|CapEff|NoNewPrivs):' /proc/self/status; "
              "unshare -U true && echo USERNS-OK || echo USERNS-REFUSED; "
              "cat /proc/kcore 2>&1 | head -c 1 | wc -c; "
              "echo 1 > /proc/sys/kernel/domainname && echo SYSCTL-W || echo SYSCTL-RO; "
              "cat /proc/self/uid_map")
    await runtime.run("iso-default", spec(seeded_registry.busybox, "c", "sh", "-c", script))
    out = await output(runtime, "iso-default")
    assert "Seccomp:\t2" in out, out
    assert f"CapEff:\t{DEFAULT_CAPEFF}" in out, out
    assert "NoNewPrivs:\t1" in out, out
    assert "USERNS-REFUSED" in out and "USERNS-OK" not in out, out
    assert "SYSCTL-RO" in out, out


async def test_security_context_fields(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    img = seeded_registry.busybox
    # runAsNonRoot with the image's root user: refused before anything starts.
    with pytest.raises(InvalidSpec, match="runAsNonRoot"):
        await runtime.run("iso-nonroot", spec(img, "c", "true",
                                              security=Security(run_as_non_root=True)))
    await runtime.run("iso-user", spec(img, "c", "sh", "-c", "id -u; grep CapEff /proc/self/status",
                                       user="1000:1000", security=Security(run_as_non_root=True)))
    assert "1000" in await output(runtime, "iso-user")
    await runtime.run("iso-ro", spec(img, "c", "sh", "-c",
                                     "touch /x && echo ROOT-W || echo ROOT-RO; "
                                     "touch /tmp/y && echo TMP-W",
                                     security=Security(read_only_rootfs=True)))
    out = await output(runtime, "iso-ro")
    assert "ROOT-RO" in out and "TMP-W" in out, out
    await runtime.run("iso-caps", spec(img, "c", "grep", "CapEff", "/proc/self/status",
                                       security=Security(capabilities_drop=("ALL",),
                                                         capabilities_add=("NET_ADMIN",))))
    assert f"{1 << 12:016x}" in await output(runtime, "iso-caps")
    await runtime.run("iso-unconf", spec(img, "c", "grep", "Seccomp:", "/proc/self/status",
                                         security=Security(seccomp="Unconfined")))
    assert "Seccomp:\t0" in await output(runtime, "iso-unconf")
    await runtime.run("iso-priv", spec(img, "c", "sh", "-c",
                                       "grep -E '^(Seccomp|CapEff)' /proc/self/status",
                                       security=Security(privileged=True)))
    out = await output(runtime, "iso-priv")
    bnd = next(ln for ln in Path("/proc/self/status").read_text().splitlines()
                if ln.startswith("CapBnd:")).split()[1]
    assert "Seccomp:\t0" in out and f"CapEff:\t{bnd}" in out, out


async def test_user_namespace_maps_root_to_a_host_range(
    runtime: CrunRuntime, seeded_registry: SeededRegistry
) -> None:
    script = ("cat /proc/self/uid_map; id -u; touch /rootfile && echo ROOT-W; "
              "ls -ln / | grep -c ' 0 ' ; sleep 30")
    await runtime.run("iso-userns-a", spec(seeded_registry.busybox, "c", "sh", "-c", script,
                                           userns="pod/default/a"))
    await runtime.run("iso-userns-b", spec(seeded_registry.busybox, "d", "sh", "-c", script,
                                           userns="pod/default/b"))
    first_a, size = runtime.id_ranges.allocate("pod/default/a")
    first_b, _ = runtime.id_ranges.allocate("pod/default/b")
    assert size == 65536 and first_a != first_b
    cfg = json.loads((runtime.root / "bundles/iso-userns-a/config.json").read_text())
    assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": first_a, "size": 65536}]
    st = await wait_state(runtime, "iso-userns-a", lambda s: s.status == "running")
    assert st.pid is not None
    uid_map = Path(f"/proc/{st.pid}/uid_map").read_text().split()
    assert uid_map == ["0", str(first_a), "65536"]
    # The process runs as an unprivileged host uid; files it made are owned by it.
    assert Path(f"/proc/{st.pid}/status").read_text().split("Uid:")[1].split()[0] == str(first_a)
    for _ in range(50):
        out = (await runtime.logs("iso-userns-a")).decode()
        if "ROOT-W" in out:
            break
        await asyncio.sleep(0.05)
    assert "ROOT-W" in out, out
    assert (runtime.root / "bundles/iso-userns-a/upper/rootfile").stat().st_uid == first_a
    await runtime.remove("iso-userns-a")
    assert runtime.id_ranges.get("pod/default/a") is None
    assert runtime.id_ranges.get("pod/default/b") is not None
