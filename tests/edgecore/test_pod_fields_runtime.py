"""How the recorded pod fields reach the runtime: hostPID / hostIPC namespaces,
mountPropagation, procMount, sysctls (the OCI config), the pod's resolv.conf from
dnsPolicy / dnsConfig, and the status note about service account tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgecore.cache import Cache
from edgecore.reconciler import CrashLoop, Reconciler, dns
from edgecore.reconciler.naming import container_spec
from edgecore.reconciler.reconciler import NO_TOKEN
from edgecore.reconciler.volumes import PROPAGATION, Volumes
from edgecore.runtime.images import ImageConfig
from edgecore.runtime.oci import build_oci_config
from edgecore.runtime.types import ContainerSpec, Mount
from shared.delta import EdgeDesired
from shared.entries import parse_pod_entry, pod_entry, pod_key
from shared.models import Pod
from shared.pods import PodSpec

from edgecore_fakes import FakeRuntime  # isort: skip

IMAGE = ImageConfig(entrypoint=("sh",), cmd=(), env=(), working_dir="/", user="",
                    stop_signal=None)


def entry_of(spec: dict[str, Any]):
    pod = Pod.model_validate({"metadata": {"name": "web"}, "spec": spec})
    return parse_pod_entry(pod_key("default", "web"), pod_entry(pod))


def oci(spec: ContainerSpec, tmp_path: Path) -> dict[str, Any]:
    return build_oci_config(spec=spec, image=IMAGE, digest="sha256:0", rootfs=tmp_path,
                            cgroups_path="x/y", swap_accounting=False)


def test_host_namespaces_sysctls_and_proc_mount_reach_the_oci_config(tmp_path: Path) -> None:
    entry = entry_of({"hostPID": True, "hostIPC": True, "hostUsers": False,
                      "securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies",
                                                       "value": "0"}]},
                      "containers": [{"name": "m", "image": "busybox",
                                      "securityContext": {"procMount": "Unmasked"}}]})
    spec = container_spec(entry, entry.spec.containers[0])
    assert (spec.host_pid, spec.host_ipc, dict(spec.sysctls)) == (
        True, True, {"net.ipv4.tcp_syncookies": "0"})
    cfg = oci(spec, tmp_path)
    kinds = [n["type"] for n in cfg["linux"]["namespaces"]]
    assert "pid" not in kinds and "ipc" not in kinds and "mount" in kinds
    assert cfg["linux"]["sysctl"] == {"net.ipv4.tcp_syncookies": "0"}
    assert "maskedPaths" not in cfg["linux"] and "readonlyPaths" not in cfg["linux"]
    shm = next(m for m in cfg["mounts"] if m["destination"] == "/dev/shm")
    assert (shm["type"], shm["source"]) == ("bind", "/dev/shm")
    # the defaults: private namespaces, masked /proc, no sysctl
    plain = entry_of({"containers": [{"name": "m", "image": "busybox"}]})
    cfg = oci(container_spec(plain, plain.spec.containers[0]), tmp_path)
    assert {"pid", "ipc"} <= {n["type"] for n in cfg["linux"]["namespaces"]}
    assert "sysctl" not in cfg["linux"] and cfg["linux"]["maskedPaths"]


@pytest.mark.parametrize(("k8s", "option"), [
    (None, "rprivate"), ("None", "rprivate"), ("HostToContainer", "rslave"),
    ("Bidirectional", "rshared")])
def test_mount_propagation_maps_to_the_bind_option(k8s: str | None, option: str,
                                                   tmp_path: Path) -> None:
    assert PROPAGATION[k8s or "None"] == option
    spec = ContainerSpec(name="m", image="busybox", mounts=(
        Mount(source=tmp_path, destination="/data", propagation=PROPAGATION[k8s or "None"]),))
    cfg = oci(spec, tmp_path)
    bind = next(m for m in cfg["mounts"] if m["destination"] == "/data")
    assert bind["options"][:2] == ["rbind", option]
    # the root propagates too when a bind does (else crun makes the tree private first)
    assert cfg["linux"].get("rootfsPropagation") == (None if option == "rprivate"
                                                     else option)


NODE_RESOLV = """# generated
nameserver 192.168.1.1
nameserver 192.168.1.2
search home.lan
options ndots:1 timeout:2
"""


def test_resolv_conf_follows_dns_policy_and_config() -> None:
    plain = PodSpec.parse({"containers": [{"name": "m", "image": "b"}]})
    assert not dns.needs_own(plain)
    merged = PodSpec.parse({"dnsConfig": {
        "nameservers": ["10.0.0.53", "192.168.1.1"], "searches": ["shop.local"],
        "options": [{"name": "ndots", "value": "3"}, {"name": "edns0"}]},
        "containers": [{"name": "m", "image": "b"}]})
    assert dns.needs_own(merged)
    assert dns.resolv_conf(merged, NODE_RESOLV) == (
        "nameserver 192.168.1.1\nnameserver 192.168.1.2\nnameserver 10.0.0.53\n"
        "search home.lan shop.local\noptions ndots:3 timeout:2 edns0\n")
    alone = PodSpec.parse({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.0.0.53"]},
                           "containers": [{"name": "m", "image": "b"}]})
    assert dns.resolv_conf(alone, NODE_RESOLV) == "nameserver 10.0.0.53\n"


class Sink:
    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}

    def update(self, key: str, status: Any) -> None:
        self.latest[key] = status


async def test_the_pod_gets_its_resolv_conf_and_a_token_note(tmp_path: Path) -> None:
    rt = FakeRuntime(clock=lambda: 1000.0)
    sink = Sink()
    pod = Pod.model_validate({"metadata": {"name": "web"}, "spec": {
        "serviceAccountName": "agent", "dnsPolicy": "None",
        "dnsConfig": {"nameservers": ["10.0.0.53"], "searches": ["shop.local"]},
        "containers": [{"name": "main", "image": "busybox:1"}]}})
    k = pod_key("default", "web")
    volumes = Volumes(tmp_path / "pods")
    rec = Reconciler(node="edge-1", runtime=rt, cache=Cache(tmp_path / "cache"),
                     desired=lambda: EdgeDesired(epoch="E", gen=1, items={k: pod_entry(pod)}),
                     sink=sink, clock=lambda: 1000.0, crashloop=CrashLoop(), volumes=volumes)
    await rec.reconcile_once()
    st = sink.latest[k]
    assert st.phase == "Running" and st.message == NO_TOKEN
    (c,) = rt.containers.values()
    (m,) = [m for m in c.spec.mounts if m.destination == "/etc/resolv.conf"]
    assert m.read_only and m.source == volumes.pod_dir(k) / "resolv.conf"
    assert m.source.read_text() == "nameserver 10.0.0.53\nsearch shop.local\n"


def test_run_as_group_alone_keeps_the_images_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("app:x:1000:1000::/:/bin/sh\n")
    entry = entry_of({"securityContext": {"runAsGroup": 3000},
                      "containers": [{"name": "m", "image": "busybox"}]})
    spec = container_spec(entry, entry.spec.containers[0])
    assert (spec.user, spec.group) == (None, 3000)
    image = ImageConfig(entrypoint=("sh",), cmd=(), env=(), working_dir="/", user="app",
                        stop_signal=None)
    cfg = build_oci_config(spec=spec, image=image, digest="sha256:0", rootfs=tmp_path,
                           cgroups_path="x/y", swap_accounting=False)
    assert (cfg["process"]["user"]["uid"], cfg["process"]["user"]["gid"]) == (1000, 3000)
    both = entry_of({"securityContext": {"runAsUser": 5, "runAsGroup": 6},
                     "containers": [{"name": "m", "image": "busybox"}]})
    spec = container_spec(both, both.spec.containers[0])
    assert (spec.user, spec.group) == ("5:6", None)


DENY_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW",
              "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                            "errnoRet": 1, "comment": "docker-only key"}],
              "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                           "subArchitectures": ["SCMP_ARCH_X86"]}]}


def test_a_localhost_profile_in_docker_form_becomes_oci() -> None:
    import json

    from edgecore.runtime import seccomp

    doc = json.loads(seccomp.localhost(json.dumps(DENY_MKDIR)))
    assert doc == {"defaultAction": "SCMP_ACT_ALLOW",
                   "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                   "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                                 "errnoRet": 1}]}
    for bad in ("not json", "[]", '{"syscalls": []}',
                '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": 3}'):
        with pytest.raises(ValueError):
            seccomp.localhost(bad)


async def test_localhost_seccomp_profiles_come_from_the_nodes_directory(
        tmp_path: Path) -> None:
    import json

    profiles = tmp_path / "seccomp"
    (profiles / "team").mkdir(parents=True)
    (profiles / "team" / "deny-mkdir.json").write_text(json.dumps(DENY_MKDIR))
    (profiles / "escape.json").symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(json.dumps(DENY_MKDIR))
    rt = FakeRuntime(clock=lambda: 1000.0)
    sink = Sink()
    items: dict[str, Any] = {}
    for name, profile in (("ok", "team/deny-mkdir.json"), ("missing", "team/none.json"),
                          ("escape", "escape.json")):
        pod = Pod.model_validate({"metadata": {"name": name}, "spec": {
            "securityContext": {"seccompProfile": {"type": "Localhost",
                                                   "localhostProfile": profile}},
            "containers": [{"name": "main", "image": "busybox:1"}]}})
        items[pod_key("default", name)] = pod_entry(pod)
    rec = Reconciler(node="edge-1", runtime=rt, cache=Cache(tmp_path / "cache"), sink=sink,
                     desired=lambda: EdgeDesired(epoch="E", gen=1, items=dict(items)),
                     clock=lambda: 1000.0, crashloop=CrashLoop(), seccomp_dir=profiles)
    await rec.reconcile_once()
    assert sink.latest["pod/default/ok"].phase == "Running"
    (c,) = rt.containers.values()
    assert c.spec.security.seccomp == "Localhost"
    assert json.loads(c.spec.security.seccomp_profile or "")["syscalls"][0]["names"] == [
        "mkdir", "mkdirat"]
    for name, why in (("missing", "cannot read"), ("escape", "leads out of")):
        st = sink.latest[f"pod/default/{name}"]
        assert (st.phase, st.reason) == ("Pending", "CreateContainerConfigError"), name
        assert why in st.message, st.message
