"""cloudcore shards (issue 14 part 2, proposal 0008 wiring steps 1, 3, 4) with real
processes: a nats-server with JetStream (`testbed.natskv`), a secure mosquitto (TLS,
password file, ACL), three `cloudcore --shard` processes and a simulated fleet
(`testbed.simulator`, the real protocol, sealed messages, TLS).

What the shards share today and what they do not (stated, not hidden):
- The fleet is joined once through an embedded cloudcore (the seed), whose state dir
  (store, fleet CA, broker password) is then copied to each shard: every shard starts
  with the same nodes, credentials and tokens (the fleet CA and broker password must be
  the same anyway; node registrations are shared through KV too since, which
  tests/integration/test_shard_objects.py covers, so the seed is no longer the only way).
  Objects are (KV, proposal 0008 step 2; tests/integration/test_shard_objects.py): each
  DaemonSet here is applied through one shard's API only and reaches the others through
  the global objects replica.
- The broker's password file and ACL must hold every shard's identities
  (`<user>_<shard>_sub/pub<i>`); every shard's files hold every shard's now (published
  in KV; tests/integration/test_shard_brokermap.py has brokers read one shard's files
  as they are); this test still merges them, which changes nothing.

What is checked: the 256 partitions are split so that each node is Ready on exactly one
shard (the others never mark it NotReady) and no shard receives another's heartbeats; a
DaemonSet applied through one shard reaches every node through its owner; kill -9 of
the global holder: its nodes are Ready on a survivor within the lease period plus a
heartbeat, the global lease on exactly one survivor, exactly the moved nodes resynced
(new epoch), none ever NotReady on any shard (polled throughout, and in the logs); a
DaemonSet applied through one survivor reaches every node; the killed shard restarted
takes its share back (with the DaemonSet applied while it was dead), none NotReady;
every owner's acked gen equals its desired gen and each node applied exactly that gen
(nothing acked is lost: the first DaemonSet's pods are still Running everywhere).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from testbed.bench import join_all
from testbed.fleet import Fleet, FleetSettings
from testbed.natskv import NatsKV
from testbed.ports import free_port
from testbed.procs import Proc

NODES = 24
HEARTBEAT = 5.0  # NotReady after 15 s without a report
LEASE = 3.0
SHARDS = ("S1", "S2", "S3")
GLOBAL_LOG = "holds the global lease; running"

pytestmark = pytest.mark.skipif(
    shutil.which("nats-server") is None or (shutil.which("mosquitto") is None
                                            and not Path("/usr/sbin/mosquitto").exists()),
    reason="needs nats-server and mosquitto")


class ShardProc:
    def __init__(self, name: str, *, workdir: Path, seed: Path, fleet: Fleet,
                 nats: NatsKV) -> None:
        self.name = name
        self.state = workdir / name
        shutil.copytree(seed, self.state)
        (self.state / "cloudcore.pid").unlink(missing_ok=True)
        self.passwd, self.acl = self.state / "broker.passwd", self.state / "broker.acl"
        assert fleet.broker is not None
        port = fleet.broker.port
        self.http_port = free_port()
        self.api = f"https://127.0.0.1:{self.http_port}"
        pwfile = workdir / "nats.password"
        pwfile.write_text(str(nats.password) + "\n")
        pwfile.chmod(0o600)
        argv = [sys.executable, "-m", "cloudcore", "--state-dir", str(self.state),
                "--shard", name, "--nats-user", str(nats.user),
                "--nats-password-file", str(pwfile), "--lease-period", str(LEASE),
                "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--mqtt-tls",
                "--mosquitto-passwd", str(self.passwd), "--mosquitto-acl", str(self.acl),
                "--advertise-mqtt", f"mqtts://127.0.0.1:{port}",
                "--http-host", "127.0.0.1", "--http-port", str(self.http_port),
                "--heartbeat", str(HEARTBEAT)]
        for url in nats.urls:
            argv += ["--nats", url]
        self.proc = Proc(f"cloudcore-{name}", argv, log=workdir / f"{name}.log")
        self.token = (self.state / "admin.token").read_text().strip()
        self.ssl = ssl.create_default_context(cafile=str(self.state / "pki" / "ca.crt"))

    def start(self) -> ShardProc:
        self.proc.start()
        return self

    def call(self, path: str, body: Any = None, timeout: float = 10) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.api}{path}", data=data, headers={
            "Authorization": f"Bearer {self.token}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout, context=self.ssl) as r:
            return json.loads(r.read())

    def dropped_not_owned(self) -> float:
        """Messages this shard received for partitions it does not hold."""
        req = urllib.request.Request(f"{self.api}/metrics",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10, context=self.ssl) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("cloudcore_messages_dropped_total")
                   and 'reason="not_owned"' in line)

    def readiness(self) -> dict[str, str]:
        """node -> readiness as this shard sees it for the nodes it owns; a node
        another shard owns (shown from that shard's status summary, reason
        OwnedByAnotherShard...) reads Unknown here."""
        items = self.call("/api/v1/nodes")["items"]
        return {n["metadata"]["name"]: "Unknown" if (n["status"].get("reason") or "")
                .startswith("OwnedByAnotherShard") else n["status"]["ready"] for n in items}

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["metadata"]["name"]: n for n in self.call("/api/v1/nodes")["items"]}

    def running(self, app: str) -> set[str]:
        """Nodes on which this shard sees a Running pod of `app`."""
        items = self.call(f"/api/v1/pods?labelSelector=app={app}")["items"]
        return {p["status"].get("nodeName") for p in items
                if (p.get("status") or {}).get("phase") == "Running"}

    def log_text(self) -> str:
        return self.proc.log.read_text(errors="replace") if self.proc.log.exists() else ""


def daemonset(name: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox",
                                                           "command": ["sleep", "9999"]}]}}}}


def merge_broker_files(shards: list[ShardProc], fleet: Fleet) -> None:
    """The broker's password file and ACL: every shard's identities and the nodes'."""
    assert fleet.broker is not None
    users: dict[str, str] = {}
    acl_users: list[str] = []
    patterns: list[str] = []
    for s in shards:
        for line in s.passwd.read_text().splitlines():
            if ":" in line:
                users.setdefault(line.split(":", 1)[0], line)
        block: list[str] = []
        for line in s.acl.read_text().splitlines():
            if line.startswith("pattern "):
                if line not in patterns:
                    patterns.append(line)
            elif line.strip():
                block.append(line)
            elif block:
                acl_users.append("\n".join(block))
                block = []
        if block:
            acl_users.append("\n".join(block))
    with open(fleet.broker.passwd, "w") as f:  # in place: the broker's group stays
        f.write("\n".join(users.values()) + "\n")
    with open(fleet.broker.acl, "w") as f:
        f.write("\n\n".join(dict.fromkeys(acl_users)) + "\n\n" + "\n".join(patterns) + "\n")


def seed_fleet(tmp_path: Path, *, heartbeat: float = HEARTBEAT) -> Fleet:
    """The seed: an embedded cloudcore taking joins fast, with the secure broker; no
    nodes yet (`join_seed`). Stop it with `stop()`."""
    return Fleet(FleetSettings(nodes=0, workdir=tmp_path / "seed", use_netns=False,
                               with_registry=False, heartbeat_s=heartbeat,
                               cloud_args=("--join-rate", "6000", "--join-burst", "100"),
                               )).start()


def join_seed(fleet: Fleet, nodes: int, keys_file: Path) -> list[str]:
    """Simulated nodes `sim-0...` joined through the seed, whose cloudcore then stops
    (its state is every shard's starting point). Returns the simulator's arguments for
    their keys (`keys_file`)."""
    names = [f"sim-{i}" for i in range(nodes)]
    sim_args = join_all(fleet, names, keys_file=keys_file, threads=2)
    assert fleet.cloud is not None and fleet.broker is not None
    fleet.cloud.stop()
    return sim_args


def start_shards(shards: list[ShardProc], names: tuple[str, ...], *, workdir: Path,
                 fleet: Fleet, nats: NatsKV) -> None:
    """Shards `names` started from the seed's state, added to `shards` at once (so that
    the caller stops them whatever happens next), the broker given every shard's
    identities; returns once every shard is ready."""
    shards += [ShardProc(n, workdir=workdir, seed=fleet.cloud_state, fleet=fleet,
                         nats=nats).start() for n in names]
    for s in shards:
        wait_for(f"{s.name} wrote its broker files",
                 lambda s=s: s.passwd.exists() and s.acl.exists(), 60)
    merge_broker_files(shards, fleet)
    for s in shards:
        wait_for(f"{s.name} ready", lambda s=s: s.call("/readyz"), 60)


def wait_for(what: str, check: Any, timeout: float, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # a shard still starting
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not after {timeout} s (last: {last!r})")


LEASE_CHANGE = re.compile(r"^(\S+ \S+) INFO cloudcore\.cluster\.shard: shard (\S+): \w+: "
                          r"\+\d+ -\d+ partitions, (\d+) held")


def stop_sim_and_shards(sim: subprocess.Popen[bytes] | None,
                        shards: list[ShardProc]) -> None:
    """Stop the simulator, then every shard, all signalled at once (so none takes over
    what another just released)."""
    if sim is not None:
        sim.terminate()
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
    for s in shards:
        if s.proc.popen is not None and s.proc.popen.poll() is None:
            s.proc.popen.send_signal(signal.SIGTERM)
    for s in shards:
        s.proc.stop()


def leases_settled(shards: list[ShardProc], quiet: float) -> bool:
    """The shards hold all 256 partitions between them (each by its log's last lease
    change) and none changed for `quiet` seconds: the membership settled, instead of
    assuming it did after a fixed time (a late joiner's share is taken at a pace that
    depends on the machine's load)."""
    total, last = 0, 0.0
    for s in shards:
        held = 0
        for line in s.log_text().splitlines():
            m = LEASE_CHANGE.match(line)
            if m and m.group(2) == s.name:
                held = int(m.group(3))
                last = max(last, datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                           .timestamp())  # the logging module's local time
        total += held
    return total == 256 and time.time() - last >= quiet


def owners(shards: list[ShardProc]) -> dict[str, list[str]]:
    """node -> the shards on which it is Ready (also records NotReady sightings)."""
    out: dict[str, list[str]] = {}
    for s in shards:
        for node, ready in s.readiness().items():
            if ready == "NotReady":
                raise NotReadySeen(f"{node} is NotReady on {s.name}")
            if ready == "Ready":
                out.setdefault(node, []).append(s.name)
    return out


class NotReadySeen(AssertionError):
    pass


def test_shards_split_partitions_and_take_over_a_killed_shard(tmp_path: Path) -> None:
    fleet = seed_fleet(tmp_path)
    shards: list[ShardProc] = []
    sim: subprocess.Popen[bytes] | None = None
    try:
        sim_args = join_seed(fleet, NODES, tmp_path / "keys.json")
        assert fleet.broker is not None
        with NatsKV(rundir=tmp_path / "nats", ca_dir=fleet.cloud_state / "pki") as nats:
            start_shards(shards, SHARDS, workdir=tmp_path / "shards", fleet=fleet,
                         nats=nats)
            gens_file = tmp_path / "gens.json"

            def sim_gens() -> dict[str, tuple[str, int]]:
                """Every simulated node's applied (epoch, gen), asked of it now."""
                assert sim is not None
                gens_file.unlink(missing_ok=True)
                sim.send_signal(signal.SIGUSR2)
                wait_for("the simulator's gens file", gens_file.exists, 10, every=0.05)
                doc = json.loads(gens_file.read_text())
                return {n: (e, g) for n, (e, g) in doc["nodes"].items()}

            sim_log = (tmp_path / "sim.log").open("wb")
            sim = subprocess.Popen(
                [sys.executable, "-m", "testbed.simulator", "--host", "127.0.0.1",
                 "--port", str(fleet.broker.port), "--prefix", "sim", "--count", str(NODES),
                 "--heartbeat", str(HEARTBEAT), "--rate", "50", "--report-pods", *sim_args,
                 "--stats", str(tmp_path / "sim.json"), "--per-node-stats",
                 "--gens-file", str(gens_file)],
                stdout=sim_log, stderr=subprocess.STDOUT)
            sim_log.close()  # the child holds its own descriptor

            # 1. every node Ready on exactly one shard, a partition on one shard only
            def all_ready() -> dict[str, list[str]] | None:
                o = owners(shards)
                return o if len(o) == NODES else None

            split = wait_for("every node Ready on one shard", all_ready, 60)
            assert all(len(v) == 1 for v in split.values()), split
            by_part: dict[str, set[str]] = {}
            from shared.topics import partition_of
            for node, (owner,) in split.items():
                by_part.setdefault(f"{partition_of(node):02x}", set()).add(owner)
            assert all(len(v) == 1 for v in by_part.values()), by_part
            held = {s: sum(1 for v in split.values() if v == [s]) for s in SHARDS}
            print(f"nodes per shard: {held}")
            # each shard subscribes only its partitions: with the split settled, no
            # heartbeat of another shard's node reaches it (two heartbeats watched)
            wait_for("the membership settled (no lease change for a lease period)",
                     lambda: leases_settled(shards, LEASE), 60)
            before = [s.dropped_not_owned() for s in shards]
            time.sleep(2 * HEARTBEAT + 1)
            assert [s.dropped_not_owned() for s in shards] == before

            # 2. a DaemonSet applied through one shard reaches every node through its
            # owner (the other shards get it from the global objects replica)
            shards[0].call("/api/v1/apply", {"documents": [daemonset("ds1")]})

            def ds_everywhere(app: str, live: list[ShardProc]) -> bool:
                o = owners(live)
                by_shard = {s.name: s.running(app) for s in live}
                return len(o) == NODES and all(n in by_shard[o[n][0]] for n in o)

            wait_for("ds1 Running on every node", lambda: ds_everywhere("ds1", shards), 60)

            # 3. kill -9 the shard holding the global lease (the global work runs on
            # exactly one shard), or if it holds no node, the one holding the most
            holders = [s for s in shards if GLOBAL_LOG in s.log_text()]
            assert len(holders) == 1, [s.name for s in holders]
            victim = (holders[0] if held[holders[0].name]
                      else max(shards, key=lambda s: held[s.name]))
            moved = {n for n, v in split.items() if v == [victim.name]}
            assert moved
            print(f"global lease: {holders[0].name}; killing {victim.name}")
            before_kill = sim_gens()
            victim.proc.kill()
            killed = time.monotonic()
            survivors = [s for s in shards if s is not victim]
            seen_not_ready: list[str] = []

            def taken_over() -> bool:
                try:
                    o = owners(survivors)
                except NotReadySeen as exc:
                    seen_not_ready.append(str(exc))
                    return False
                return len(o) == NODES and all(len(v) == 1 for v in o.values())

            wait_for("the killed shard's nodes Ready on a survivor", taken_over,
                     LEASE + 3 * HEARTBEAT)
            took = time.monotonic() - killed
            if victim is holders[0]:  # the global work moved to exactly one survivor
                wait_for("a survivor holds the global lease", lambda: [
                    s for s in shards if s is not victim and GLOBAL_LOG in s.log_text()],
                    LEASE + 5)
                assert sum(GLOBAL_LOG in s.log_text() for s in shards if s is not victim) == 1
            print(f"{len(moved)} node(s) of {victim.name} Ready on a survivor "
                  f"{took:.1f} s after kill -9 (lease period {LEASE} s)")
            # keep watching for one NotReady window: none may flap
            end = time.monotonic() + 3 * HEARTBEAT
            while time.monotonic() < end:
                try:
                    owners(survivors)
                except NotReadySeen as exc:
                    seen_not_ready.append(str(exc))
                time.sleep(0.3)
            assert not seen_not_ready, seen_not_ready
            for s in survivors:
                assert " is NotReady" not in s.log_text(), s.name

            # every node whose owner changed resynced (a new epoch: a snapshot from the
            # new owner); a node that kept its owner was not disturbed (same epoch). The
            # killed shard's nodes all changed owner; the survivors may also hand each
            # other a partition while their views of the membership settle.
            after_kill = owners(survivors)
            changed = {n for n in after_kill if after_kill[n] != split[n]}
            assert moved <= changed
            wrong: list[str] = []

            def resynced() -> bool:
                now = sim_gens()
                wrong[:] = [f"{n}: {split[n]}->{after_kill[n]} {before_kill[n]}->{now[n]}"
                            for n in now
                            if (now[n][0] != before_kill[n][0]) != (n in changed)]
                return not wrong

            try:
                wait_for("the nodes that changed owner (only) in a new epoch", resynced,
                         3 * HEARTBEAT)
            except AssertionError:
                raise AssertionError(f"epochs not as owners changed: {wrong}") from None
            if changed - moved:
                print(f"also moved between survivors: {sorted(changed - moved)}")
            stats = json.loads((tmp_path / "sim.json").read_text())
            print("simulator:", {k: stats.get(k) for k in ("snapshots_in", "deltas_in",
                                                           "gaps", "reacks")})

            # 4. a DaemonSet applied through one survivor after the takeover reaches
            # every node, and ds1 (acked before the kill) is still Running everywhere
            survivors[0].call("/api/v1/apply", {"documents": [daemonset("ds2")]})
            wait_for("ds2 Running on every node", lambda: ds_everywhere("ds2", survivors), 60)
            wait_for("ds1 still Running on every node",
                     lambda: ds_everywhere("ds1", survivors), 30)

            # 5. the killed shard comes back (same state dir): it takes its share again,
            # the survivors hand partitions over (loss announced, unsubscribed, before
            # the release), and still no node is NotReady anywhere
            victim.proc.start()
            wait_for(f"{victim.name} ready again", lambda: victim.call("/readyz"), 60)

            def rebalanced() -> bool:
                try:
                    o = owners(shards)
                except NotReadySeen as exc:
                    seen_not_ready.append(str(exc))
                    return False
                mine = sum(1 for v in o.values() if v == [victim.name])
                return len(o) == NODES and all(len(v) == 1 for v in o.values()) and mine > 0

            wait_for(f"{victim.name} holds nodes again", rebalanced, 60)
            end = time.monotonic() + 3 * HEARTBEAT
            while time.monotonic() < end:
                try:
                    owners(shards)
                except NotReadySeen as exc:
                    seen_not_ready.append(str(exc))
                time.sleep(0.3)
            assert not seen_not_ready, seen_not_ready
            back = {n for n, v in owners(shards).items() if v == [victim.name]}
            print(f"{victim.name} rejoined and holds {len(back)} node(s)")
            # the survivors unsubscribed what they handed over: no heartbeat of the
            # partitions they gave up reaches them any more
            before = [s.dropped_not_owned() for s in shards]
            time.sleep(2 * HEARTBEAT + 1)
            assert [s.dropped_not_owned() for s in shards] == before

            # 6. both DaemonSets Running on every node through its owner, the restarted
            # shard's nodes included (ds2 reached it from the replica)
            survivors = shards
            wait_for("ds2 Running on every node after the rejoin",
                     lambda: ds_everywhere("ds2", survivors), 60)
            wait_for("ds1 Running on every node after the rejoin",
                     lambda: ds_everywhere("ds1", survivors), 30)

            def all_acked() -> bool:
                o = owners(survivors)
                views = {s.name: s.nodes() for s in survivors}
                return all(views[o[n][0]][n]["status"]["ackedGen"]
                           == views[o[n][0]][n]["status"]["desiredGen"] > 0 for n in o)

            try:
                wait_for("every owner's acked gen equals its desired gen", all_acked, 30)
            except AssertionError:
                o = owners(survivors)
                views = {s.name: s.nodes() for s in survivors}
                applied = sim_gens()
                for n in sorted(o):
                    st = views[o[n][0]][n]["status"]
                    if st["ackedGen"] != st["desiredGen"]:
                        shown = {k: (v[n]["status"]["desiredGen"], v[n]["status"]["ackedGen"])
                                 for k, v in views.items()}
                        print(f"UNACKED {n}: owner {o[n][0]} ackedGen {st['ackedGen']} "
                              f"desiredGen {st['desiredGen']} ready {st.get('ready')} "
                              f"reason {st.get('reason')} edge {applied.get(n)}; "
                              f"(desiredGen, ackedGen) as each shard shows them: {shown}")
                        for s in survivors:
                            for line in s.log_text().splitlines():
                                if n in line:
                                    print(f"  {s.name}: {line}")
                raise
            # and the nodes applied exactly what their owners recorded as acked
            o = owners(shards)
            views = {s.name: s.nodes() for s in shards}
            applied = sim_gens()
            assert all(applied[n][1] == views[o[n][0]][n]["status"]["ackedGen"] for n in o)
            for s in shards:  # no shard ever marked a node NotReady (also between polls)
                assert " is NotReady" not in s.log_text(), s.name
    finally:
        stop_sim_and_shards(sim, shards)
        fleet.stop()
