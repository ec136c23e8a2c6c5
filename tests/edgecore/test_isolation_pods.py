"""Workload isolation end to end: the reconciler on real crun containers with the real
pod network (a test bridge, netns, nftables), Secret tmpfs and the agent's policy check.

- a default pod is confined (seccomp 2, default capabilities, no user namespaces, no
  host /etc/shadow, none of the host's interfaces);
- hostPath /, privileged and hostNetwork specs forged past the cloud are refused by the
  agent (PolicyViolation naming the field), and run where the level allows them;
- two pods reach each other by pod IP and the outside through NAT; a hostPort is
  reachable from another network namespace and from the node itself; the network goes
  with the pod;
- a Secret volume is a tmpfs (also in a hostUsers: false pod) and is gone with the pod;
- an unprivileged local user cannot read the agent's cache or pod volumes.

Each test uses its own bridge, address range, nftables table and netns prefix, so it
never touches a real agent's `edgefed0`.
"""

# ruff: noqa: F811  (pytest fixtures imported from fixtures_runtime are parameters here)
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from edgecore.podnet import PodNetwork
from edgecore.podnet.netns import _socket_in
from edgecore.reconciler.naming import container_id
from edgecore.runtime import CrunRuntime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_runtime import (  # noqa: F401  (fixtures are used by name)
    SeededRegistry,
    runtime,
    seeded_registry,
)
from test_edge_workloads_crun import Node, add_pod

from testbed.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture
def podnet(tmp_path: Path) -> Iterator[PodNetwork]:
    """A pod network of the test's own (bridge, /24, table, netns prefix)."""
    _need("ip", "nft")
    tag = uuid.uuid4().hex[:6]
    third = int(tag[:2], 16) % 200 + 20
    net = PodNetwork(tmp_path / "podnet", bridge=f"eft{tag}", cidr=f"10.123.{third}.0/24",
                     table=f"eft{tag}", netns_prefix=f"eft{tag}-")
    yield net
    for key in list(net.keys()):
        asyncio.run(net.detach(key))
    subprocess.run(["ip", "link", "del", net.bridge], capture_output=True, check=False)
    subprocess.run(["nft", "delete", "table", "ip", net.table], capture_output=True,
                   check=False)


@pytest_asyncio.fixture
async def node(runtime: CrunRuntime, tmp_path: Path,
               podnet: PodNetwork) -> AsyncIterator[Node]:
    n = Node(runtime, tmp_path)
    n.rec.network = podnet
    task = asyncio.create_task(n.rec.run())
    try:
        yield n
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await n.rec.reconcile_once()  # nothing desired any more is removed below
        n.cache.close()


async def logs_of(rt: CrunRuntime, cid: str, marker: str, timeout: float = 10) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        out = (await rt.logs(cid)).decode()
        if marker in out or asyncio.get_running_loop().time() > deadline:
            return out
        await asyncio.sleep(0.05)


def running(node: Node, key: str) -> bool:
    st = node.latest.get(key)
    return st is not None and st.phase == "Running"


async def test_default_pod_is_confined(node: Node, runtime: CrunRuntime,
                                       seeded_registry: SeededRegistry) -> None:
    script = ("grep -E '^(Seccomp|CapEff):' /proc/self/status; "
              "unshare -U true 2>/dev/null && echo USERNS-OK || echo USERNS-REFUSED; "
              "cat /etc/shadow 2>&1 | head -1; echo IFACES $(ls /sys/class/net); "
              "grep -c 192.0.2 /proc/net/fib_trie; echo DONE; sleep 30")
    key, entry = add_pod(node, "plain", {"containers": [{
        "name": "main", "image": seeded_registry.busybox, "command": ["sh", "-c", script]}]})
    await node.until("running", lambda: running(node, key))
    cid = container_id("default", "plain", "main", entry["revision"])
    out = await logs_of(runtime, cid, "DONE")
    assert "Seccomp:\t2" in out and "CapEff:\t00000000a80425fb" in out, out
    assert "USERNS-REFUSED" in out, out
    assert "root:" not in out, out  # the image has no shadow file; the host's is not there
    assert "IFACES eth0 lo" in out, out  # the pod's own eth0, none of the host's (ifb0...)
    st = node.latest[key]
    assert st is not None and st.pod_ip is not None and st.pod_ip.startswith("10.123.")


async def test_forged_specs_are_refused_by_the_agent(node: Node, runtime: CrunRuntime,
                                                     seeded_registry: SeededRegistry) -> None:
    img = seeded_registry.busybox
    c = {"name": "main", "image": img, "command": ["sleep", "30"]}
    forged = {
        "root": ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}],
                  "containers": [{**c, "volumeMounts": [{"name": "h", "mountPath": "/h"}]}]},
                 "spec.volumes[0].hostPath.path \"/\" not allowed by baseline"),
        "priv": ({"containers": [{**c, "securityContext": {"privileged": True}}]},
                 "spec.containers[0].securityContext.privileged true not allowed by baseline"),
        "hostnet": ({"hostNetwork": True, "containers": [c]},
                    "spec.hostNetwork true not allowed by baseline"),
    }
    keys = {}
    for name, (spec, _) in forged.items():
        # No policy in the entry (as if a message skipped the cloud's admission): the
        # agent applies its default level, baseline.
        keys[name], _ = add_pod(node, name, spec)
    # The same privileged spec admitted under a namespace labelled privileged runs.
    ok, ok_entry = add_pod(node, "trusted", {"containers": [{
        **c, "command": ["sh", "-c", "grep Seccomp: /proc/self/status; sleep 30"],
        "securityContext": {"privileged": True}}]}, policy={"level": "privileged"})
    for name, (_, message) in forged.items():
        await node.until(f"{name} refused", lambda k=keys[name]: node.latest.get(k) is not None
                         and node.latest[k].reason == "PolicyViolation")  # type: ignore[union-attr]
        st = node.latest[keys[name]]
        assert st is not None and st.phase == "Failed"
        assert st.message is not None and st.message.startswith("PolicyViolation: "), st
        assert message in st.message, st.message
    await node.until("trusted runs", lambda: running(node, ok))
    cid = container_id("default", "trusted", "main", ok_entry["revision"])
    assert "Seccomp:\t0" in await logs_of(runtime, cid, "Seccomp")
    pods = {s.annotations.get("edgefed.io/pod") for s in await runtime.list()}
    assert pods == {ok}  # nothing of the refused pods was created
    # An agent capped at baseline refuses even what the entry says was admitted.
    node.rec.policy_cap = "baseline"
    node.put(ok, {**ok_entry, "revision": ok_entry["revision"]})
    await node.until("cap applies", lambda: node.latest[ok] is not None
                     and node.latest[ok].reason == "PolicyViolation")  # type: ignore[union-attr]
    assert [s for s in await runtime.list() if s.annotations.get("edgefed.io/pod") == ok] == []


@contextlib.contextmanager
def outside_netns(addr_host: str, addr_ext: str) -> Iterator[str]:
    """A namespace that is "another host": a veth to the node, route to the pods via it."""
    tag = uuid.uuid4().hex[:6]
    ns, veth = f"eftext{tag}", f"vx{tag}"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", ns)
    try:
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "addr", "add", f"{addr_host}/30", "dev", veth)
        run("ip", "link", "set", veth, "up")
        run("ip", "-n", ns, "addr", "add", f"{addr_ext}/30", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        yield f"/run/netns/{ns}"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)


async def serve_peer_address(sock: Any) -> tuple[asyncio.Server, list[str]]:
    """A TCP server on `sock` that answers every client with its address, and records it."""
    seen: list[str] = []

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peer = w.get_extra_info("peername")[0]
        seen.append(peer)
        w.write(f"you are {peer}\n".encode())
        await w.drain()
        w.close()

    sock.listen(8)
    sock.setblocking(False)
    return await asyncio.start_server(handle, sock=sock), seen


async def test_pod_network_pod_ip_nat_and_host_port(
    node: Node, runtime: CrunRuntime, podnet: PodNetwork, seeded_registry: SeededRegistry,
) -> None:
    img = seeded_registry.busybox
    host_port = free_port()
    with outside_netns("10.124.0.1", "10.124.0.2") as ext:
        # "The outside": a server in another namespace that reports the address it sees.
        sock = await asyncio.to_thread(_socket_in, ext)
        sock.bind(("10.124.0.2", 0))
        ext_port = sock.getsockname()[1]
        server, seen = await serve_peer_address(sock)
        try:
            www = "mkdir -p /tmp/w; echo hello-from-$(hostname) > /tmp/w/index.html; "
            a, _ = add_pod(node, "a", {"containers": [{
                "name": "web", "image": img, "ports": [{"containerPort": 80,
                                                        "hostPort": host_port}],
                "command": ["sh", "-c", www + "exec httpd -f -p 80 -h /tmp/w"]}]},
                policy={"level": "privileged"})  # hostPort needs more than baseline
            b, b_entry = add_pod(node, "b", {"containers": [{
                "name": "web", "image": img,
                "command": ["sh", "-c", www + "exec httpd -f -p 80 -h /tmp/w"]}]})
            await node.until("both running", lambda: running(node, a) and running(node, b))
            ip_a, ip_b = node.latest[a].pod_ip, node.latest[b].pod_ip  # type: ignore[union-attr]
            assert ip_a and ip_b and ip_a != ip_b
            cid_b = container_id("default", "b", "web", b_entry["revision"])
            # Pod to pod by pod IP. Running means httpd's shell started, not that httpd
            # listens yet (a loaded machine shows the difference): asked until it answers.
            async with asyncio.timeout(30):
                while True:
                    rc, out, err = await runtime.exec(cid_b, ["wget", "-q", "-O", "-",
                                                              f"http://{ip_a}/index.html"])
                    if rc == 0 or b"refused" not in err:
                        break
                    await asyncio.sleep(0.2)
            assert rc == 0 and b"hello-from-web" in out, err
            # Pod to the outside, masqueraded to the node's address on that link.
            rc, out, err = await runtime.exec(cid_b, ["nc", "-w", "3", "10.124.0.2",
                                                      str(ext_port)])
            assert rc == 0 and b"you are 10.124.0.1" in out, (out, err)
            assert seen == ["10.124.0.1"]
            # The node's own address (its uplink's) is reachable too.
            node_addr = _uplink_address()
            if node_addr is not None:
                local = await asyncio.to_thread(_socket_in, "/proc/self/ns/net")
                local.bind((node_addr, 0))
                local_server, _ = await serve_peer_address(local)
                try:
                    rc, out, err = await runtime.exec(cid_b, [
                        "nc", "-w", "3", node_addr, str(local.getsockname()[1])])
                    assert rc == 0 and f"you are {ip_b}".encode() in out, (out, err)
                finally:
                    local_server.close()
                    await local_server.wait_closed()
            # The hostPort from another namespace (prerouting DNAT) ...
            proc = await asyncio.create_subprocess_exec(
                "nsenter", f"--net={ext}", "wget", "-q", "-O", "-",
                f"http://10.124.0.1:{host_port}/index.html",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0 and b"hello-from-web" in out, err
            # ... and from the node itself, on 127.0.0.1 too (output DNAT).
            for addr in ("10.124.0.1", "127.0.0.1"):
                r, w = await asyncio.open_connection(addr, host_port)
                w.write(b"GET /index.html HTTP/1.0\r\n\r\n")
                assert b"hello-from-web" in await r.read()
                w.close()
            # The pod goes, its network goes: namespace, veth, address, DNAT rule.
            netns_a = podnet.address(a).netns  # type: ignore[union-attr]
            del node.items[a]
            node.gen += 1
            node.rec.wake()
            await node.until("a gone", lambda: node.latest.get(a, 1) is None)
            assert not Path(netns_a).exists() and podnet.address(a) is None
            rules = subprocess.run(["nft", "list", "table", "ip", podnet.table],
                                   capture_output=True, text=True, check=True).stdout
            assert str(host_port) not in rules
            # b keeps its address across an agent restart (persisted IPAM).
            again = PodNetwork(podnet.state_dir, bridge=podnet.bridge, cidr=str(podnet.net),
                               table=podnet.table, netns_prefix=podnet.netns_prefix)
            assert again.address(b) == podnet.address(b)
        finally:
            server.close()
            await server.wait_closed()


async def test_secret_volume_on_tmpfs_also_with_user_namespace(
    node: Node, runtime: CrunRuntime, seeded_registry: SeededRegistry,
) -> None:
    node.put("secret/default/creds", {"data": {"token": "czNjcmV0"}})  # "s3cret"
    script = ("cat /run/creds/token; echo; grep ' /run/creds ' /proc/self/mounts; "
              "cat /proc/self/uid_map; echo DONE; sleep 30")
    key, entry = add_pod(node, "sec", {"hostUsers": False, "containers": [{
        "name": "main", "image": seeded_registry.busybox, "command": ["sh", "-c", script],
        "volumeMounts": [{"name": "creds", "mountPath": "/run/creds"}]}],
        "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}]})
    await node.until("running", lambda: running(node, key))
    cid = container_id("default", "sec", "main", entry["revision"])
    out = await logs_of(runtime, cid, "DONE")
    assert "s3cret" in out and " /run/creds tmpfs " in out, out
    first, _ = runtime.id_ranges.allocate(key)
    assert f"0 {first} 65536".split() == out.split("DONE")[0].split()[-3:], out
    secret_dir = node.volumes.pod_dir(key) / "secret"
    assert _fs_type(secret_dir) == "tmpfs"
    del node.items[key]
    node.gen += 1
    node.rec.wake()
    await node.until("gone", lambda: node.latest.get(key, 1) is None)
    assert _fs_type(secret_dir) is None and not secret_dir.exists()
    assert runtime.id_ranges.get(key) is None


def _uplink_address() -> str | None:
    """The node's IPv4 address on eth0 (its uplink here), if it has one."""
    r = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True,
                       text=True, check=False)
    parts = r.stdout.split()
    return parts[3].split("/")[0] if r.returncode == 0 and len(parts) > 3 else None


def _fs_type(path: Path) -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == str(path):
            return right.split()[0]
    return None


async def test_local_user_cannot_read_the_agent_store(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    _need("setpriv")
    # A state dir anyone could traverse to (pytest's tmp_path is 0700 already).
    state = Path(f"/tmp/edgefed-store-{uuid.uuid4().hex[:8]}")
    state.mkdir(mode=0o755)
    try:
        node = Node(runtime, state)
        node.put("secret/default/creds", {"data": {"token": "czNjcmV0"}})
        key, _ = add_pod(node, "s", {"containers": [{
            "name": "main", "image": seeded_registry.busybox, "command": ["sleep", "30"],
            "volumeMounts": [{"name": "creds", "mountPath": "/run/creds"}]}],
            "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}]})
        await node.rec.reconcile_once()
        node.cache.close()
        secret_file = node.volumes.pod_dir(key) / "secret" / "creds" / "token"
        assert secret_file.read_text() == "s3cret"
        for target in (state / "cache" / "data.mdb", secret_file):
            r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                "cat", str(target)], capture_output=True, text=True,
                               check=False)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (target, r)
        assert oct(os.stat(state / "cache").st_mode & 0o777) == "0o700"
        assert oct(os.stat(state / "cache" / "data.mdb").st_mode & 0o777) == "0o600"
        node.volumes.remove(key)
    finally:
        for s in await runtime.list():
            await runtime.remove(s.id)
        shutil.rmtree(state, ignore_errors=True)


async def test_pod_network_ipam_clash_and_sweep(podnet: PodNetwork) -> None:
    from edgecore.podnet import HostPort, NetworkError

    a = await podnet.attach("pod/default/a", host_ports=[HostPort(18081, 80)])
    b = await podnet.attach("pod/default/b")
    assert a.ip != b.ip and Path(a.netns).exists()
    assert await podnet.attach("pod/default/a", host_ports=[HostPort(18081, 80)]) == a
    with pytest.raises(NetworkError, match="hostPort 18081/TCP is already used"):
        await podnet.attach("pod/default/c", host_ports=[HostPort(18081, 8080)])
    await podnet.detach("pod/default/c")
    # A namespace lost (a reboot empties /run) is made again with the same address.
    subprocess.run(["ip", "netns", "del", Path(b.netns).name], check=True)
    assert await podnet.attach("pod/default/b") == b and Path(b.netns).exists()
    assert await podnet.sweep({"pod/default/b"}) == ["pod/default/a"]
    assert not Path(a.netns).exists() and podnet.address("pod/default/a") is None
    assert not await podnet.detach("pod/default/a")  # idempotent
    # The freed address is handed out again (lowest free).
    assert (await podnet.attach("pod/default/d")).ip == a.ip
    assert oct((podnet.state_dir).stat().st_mode & 0o777) == "0o700"
    # A veth left behind without its namespace (a namespace the kernel is still
    # tearing down, or a crash): the fast two-batch create fails once and is redone.
    netns_e, veth_e = podnet._names("pod/default/e")
    subprocess.run(["ip", "link", "add", veth_e, "type", "veth", "peer", "name",
                    f"{veth_e[:10]}p"], check=True)
    e = await podnet.attach("pod/default/e")
    assert Path(e.netns).exists()
    out = subprocess.run(["ip", "-n", netns_e, "-o", "-4", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    assert f" {e.ip}/" in out
