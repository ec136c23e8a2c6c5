"""The agent's policy re-check and the securityContext -> runtime mapping, on the fake
runtime (no crun): what reaches `runtime.run`, and what never does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecore.cache import Cache
from edgecore.reconciler import Reconciler
from edgecore.reconciler.naming import container_id
from edgecore.reconciler.volumes import Volumes
from shared.delta import EdgeDesired
from shared.entries import pod_entry, pod_key
from shared.models import Pod
from shared.pods import PodStatus

from edgecore_fakes import FakeRuntime  # isort: skip


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.runtime = FakeRuntime(clock=lambda: 1000.0)
        self.cache = Cache(tmp_path / "cache")
        self.items: dict[str, Any] = {}
        self.gen = 1
        self.latest: dict[str, PodStatus | None] = {}
        self.rec = Reconciler(node="n", runtime=self.runtime, cache=self.cache, sink=self,
                              desired=lambda: EdgeDesired(epoch="E", gen=self.gen,
                                                          items=dict(self.items)),
                              clock=lambda: 1000.0, volumes=Volumes(tmp_path / "pods"))

    def update(self, key: str, status: PodStatus | None) -> None:
        self.latest[key] = status

    def put(self, name: str, spec: dict[str, Any], policy: dict[str, Any] | None = None,
            ) -> tuple[str, dict[str, Any]]:
        p = Pod.model_validate({"metadata": {"name": name}, "spec": spec})
        key, entry = pod_key("default", name), pod_entry(p)
        if policy is not None:
            entry["policy"] = policy
        self.items[key] = entry
        self.gen += 1
        return key, entry


def c(**kw: Any) -> dict[str, Any]:
    return {"name": "main", "image": "busybox:1", "command": ["sleep", "1"], **kw}


async def test_security_context_reaches_the_runtime(tmp_path: Path) -> None:
    w = World(tmp_path)
    key, entry = w.put("p", {
        "hostUsers": False,
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True,
                            "fsGroup": 2000, "supplementalGroups": [3000]},
        "containers": [c(securityContext={
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            "seccompProfile": {"type": "RuntimeDefault"}})]})
    await w.rec.reconcile_once()
    spec = w.runtime.containers[container_id("default", "p", "main", entry["revision"])].spec
    sec = spec.security
    assert spec.user == "1000:1000" and sec.run_as_non_root and sec.read_only_rootfs
    assert sec.no_new_privileges and not sec.privileged and sec.seccomp == "RuntimeDefault"
    assert sec.capabilities_drop == ("ALL",) and sec.capabilities_add == ("CAP_NET_BIND_SERVICE",)
    assert spec.userns == key and spec.supplemental_groups == (3000, 2000)
    assert spec.netns == "private"  # no pod network on this agent: loopback only, never the host's
    w.cache.close()


async def test_policy_violations_never_reach_the_runtime(tmp_path: Path) -> None:
    w = World(tmp_path)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "escape").symlink_to("/")
    cases = {
        "caps": ({"containers": [c(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}})]},
                 None, 'spec.containers[0].securityContext.capabilities.add[0] "SYS_ADMIN" '
                       "not allowed by baseline"),
        "unconfined": ({"containers": [c(securityContext={
            "seccompProfile": {"type": "Unconfined"}})]}, None,
            'securityContext.seccompProfile.type "Unconfined" not allowed by baseline'),
        "hostport": ({"containers": [c(ports=[{"containerPort": 80, "hostPort": 80}])]}, None,
                     "spec.containers[0].ports[0].hostPort 80 not allowed by baseline"),
        # Admitted by the cloud under an allowed prefix, but a symbolic link on the node
        # leads to /: the agent checks where the path really goes.
        "symlink": ({"volumes": [{"name": "h", "hostPath": {"path": str(allowed / "escape")}}],
                     "containers": [c(volumeMounts=[{"name": "h", "mountPath": "/h",
                                                     "readOnly": True}])]},
                    {"level": "baseline", "hostPathAllow": [str(allowed)]},
                    "resolves on this node to /"),
        # restricted asks for more than the entry gives.
        "restricted": ({"containers": [c()]}, {"level": "restricted"},
                       "allowPrivilegeEscalation null not allowed by restricted"),
    }
    keys = {name: w.put(name, spec, policy)[0] for name, (spec, policy, _) in cases.items()}
    await w.rec.reconcile_once()
    assert w.runtime.containers == {}
    for name, (_, _, text) in cases.items():
        st = w.latest[keys[name]]
        assert st is not None and st.phase == "Failed" and st.reason == "PolicyViolation"
        assert st.message is not None and text in st.message, (name, st.message)
    w.cache.close()


async def test_agent_cap_and_a_later_forged_revision(tmp_path: Path) -> None:
    w = World(tmp_path)
    key, entry = w.put("p", {"containers": [c()]})  # baseline by default: fine
    await w.rec.reconcile_once()
    assert len(w.runtime.running()) == 1
    # A new revision of the same pod that turns privileged, with no level: refused, and
    # the running container of the old revision is removed, not left behind.
    key, entry = w.put("p", {"containers": [c(securityContext={"privileged": True})]})
    await w.rec.reconcile_once()
    assert w.runtime.running() == set() and w.latest[key].reason == "PolicyViolation"  # type: ignore[union-attr]
    # Admitted as privileged, it runs; an agent capped at baseline still refuses it.
    w.items[key] = {**entry, "policy": {"level": "privileged"}}
    w.gen += 1
    await w.rec.reconcile_once()
    assert w.runtime.running() and w.latest[key].phase == "Running"  # type: ignore[union-attr]
    w.rec.policy_cap = "baseline"
    w.gen += 1
    await w.rec.reconcile_once()
    assert w.runtime.running() == set() and w.latest[key].reason == "PolicyViolation"  # type: ignore[union-attr]
    w.cache.close()


async def test_localhost_seccomp_is_a_config_error(tmp_path: Path) -> None:
    w = World(tmp_path)
    key, _ = w.put("p", {"containers": [c(securityContext={"seccompProfile": {
        "type": "Localhost", "localhostProfile": "my.json"}})]}, {"level": "privileged"})
    await w.rec.reconcile_once()
    st = w.latest[key]
    assert st is not None and st.phase == "Pending"
    cs = st.container_statuses[0]
    assert cs.reason == "CreateContainerConfigError" and "Localhost" in (cs.message or "")
    w.cache.close()
