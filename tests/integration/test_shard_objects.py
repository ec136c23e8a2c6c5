"""Global state shared by cloudcore shards (issue 14 part 2, proposal 0008 wiring steps 2
and 5) with real processes: a nats-server with JetStream (`testbed.natskv`), a secure
mosquitto, two `cloudcore --shard` processes and a simulated fleet speaking the real
protocol (`testbed.simulator`).

Checked, each through the shard that did not make the change:
- a DaemonSet applied through shard A only is readable through B (same uid and
  resourceVersion) and Running on every node, B's nodes included (B's replica expanded
  it for the nodes B owns);
- a Secret applied through A is readable, decrypted, through B;
- a label set through B on a node A owns reaches A (a DaemonSet selecting it runs there);
- an update carrying a resourceVersion that another shard's write made stale answers 409;
- a watch of ConfigMaps on B sees the create, update and delete made through A; a
  watch on A resumed from a resourceVersion seen on B gets only what changed since
  (MODIFIED, DELETED), then what comes;
- a node owned by A is listed by B with its status (Ready, its last report time),
  marked `OwnedByAnotherShard`;
- a node joining through B into a partition A holds is known to A with its credentials
  (the same name joining through A is refused), Ready on A and running the DaemonSet;
  deleted through A, it is gone from B and from both shards' broker password files;
- API and join tokens made through one shard work through the other (a join token's
  uses are counted for all), a token revoked through one is refused by the other;
- a broker added to the map through B is in A's map; removed through A, gone from B's;
- a shard restarted after an object was deleted and another made through A drops the
  first and holds the second.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from integration.test_shards import (
    ShardProc,
    daemonset,
    join_seed,
    merge_broker_files,
    pytestmark,  # noqa: F401  (needs nats-server and mosquitto)
    seed_fleet,
    start_shards,
    stop_sim_and_shards,
    wait_for,
)
from shared.topics import partition_of
from testbed.natskv import NatsKV

NODES = 12
HEARTBEAT = 5.0
AWAY = "OwnedByAnotherShard"


def owners(shards: list[ShardProc]) -> dict[str, str]:
    """node -> the shard on which it is Ready and not marked as another shard's."""
    out: dict[str, str] = {}
    for s in shards:
        for name, n in s.nodes().items():
            st = n["status"]
            if st["ready"] == "Ready" and not (st.get("reason") or "").startswith(AWAY):
                assert name not in out, f"{name} owned by {out[name]} and {s.name}"
                out[name] = s.name
    return out


def configmap(name: str, value: str, version: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if version is not None:
        meta["resourceVersion"] = version
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": value}}


class WatchReader:
    """A watch stream read in a thread: every JSON line it sent, in order."""

    def __init__(self, shard: ShardProc, path: str) -> None:
        req = urllib.request.Request(f"{shard.api}{path}",
                                     headers={"Authorization": f"Bearer {shard.token}"})
        self.resp = urllib.request.urlopen(req, timeout=120, context=shard.ssl)
        self.lines: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.resp:
                if raw.strip():
                    self.lines.append(json.loads(raw))
        except (OSError, ValueError, AttributeError):  # closed by close() meanwhile
            pass

    def events(self, name: str) -> list[str]:
        return [x["type"] for x in list(self.lines)
                if x.get("type") != "BOOKMARK" and x["object"]["metadata"]["name"] == name]

    def close(self) -> None:
        self.resp.close()


def test_objects_applied_through_one_shard_reach_the_other(tmp_path: Path) -> None:
    fleet = seed_fleet(tmp_path, heartbeat=HEARTBEAT)
    shards: list[ShardProc] = []
    sim: subprocess.Popen[bytes] | None = None
    try:
        sim_args = join_seed(fleet, NODES, tmp_path / "keys.json")
        assert fleet.broker is not None
        with NatsKV(rundir=tmp_path / "nats", ca_dir=fleet.cloud_state / "pki") as nats:
            start_shards(shards, ("A", "B"), workdir=tmp_path / "shards", fleet=fleet,
                         nats=nats)
            sim_log = (tmp_path / "sim.log").open("wb")
            sim = subprocess.Popen(
                [sys.executable, "-m", "testbed.simulator", "--host", "127.0.0.1",
                 "--port", str(fleet.broker.port), "--prefix", "sim", "--count", str(NODES),
                 "--heartbeat", str(HEARTBEAT), "--rate", "50", "--report-pods", *sim_args],
                stdout=sim_log, stderr=subprocess.STDOUT)
            sim_log.close()

            split = wait_for("every node Ready on exactly one shard",
                             lambda: _if(owners(shards), lambda o: len(o) == NODES), 90)
            held = {s.name: sorted(n for n, o in split.items() if o == s.name)
                    for s in shards}
            print(f"nodes per shard: { {k: len(v) for k, v in held.items()} }")
            # A: the shard holding nodes (writes go through it); B the other
            a, b = sorted(shards, key=lambda s: -len(held[s.name]))

            # a node owned by A is listed by B with its status
            def shown_by_b() -> bool:
                seen = b.nodes()
                return all(seen[n]["status"]["ready"] == "Ready"
                           and seen[n]["status"]["reason"].startswith(AWAY)
                           and seen[n]["status"].get("lastSeen") for n in held[a.name])

            wait_for("A's nodes listed Ready by B", shown_by_b, 30)
            one = held[a.name][0]
            assert b.call(f"/api/v1/nodes/{one}")["status"]["ready"] == "Ready"

            # a DaemonSet applied through A only: readable through B, on every node
            t0 = time.monotonic()
            assert a.call("/api/v1/apply", {"documents": [daemonset("g1")]}
                          )["results"][0]["action"] == "created"
            t1 = time.monotonic()
            on_b = wait_for("g1 on B", lambda: _get(b, "/api/v1/daemonsets/default/g1"), 30,
                            every=0.02)
            t2 = time.monotonic()
            print(f"apply through A answered in {t1 - t0:.3f} s; readable through B "
                  f"{t2 - t0:.3f} s after the call")
            on_a = a.call("/api/v1/daemonsets/default/g1")
            assert on_a["metadata"]["resourceVersion"]
            assert on_b["metadata"]["uid"] == on_a["metadata"]["uid"]
            assert on_b["metadata"]["resourceVersion"] == on_a["metadata"]["resourceVersion"]

            def everywhere() -> bool:
                by_shard = {s.name: s.running("g1") for s in shards}
                return all(n in by_shard[o] for n, o in split.items())

            wait_for("g1 Running on every node through its owner", everywhere, 90)

            # a label set through B on a node A owns reaches A: a DaemonSet selecting
            # it (applied through B) runs there, through A, and nowhere else
            target = held[a.name][0]
            code, _ = _status(b, f"/api/v1/nodes/{target}",
                              {"metadata": {"labels": {"tier": "special"}}}, method="PATCH")
            assert code == 200
            wait_for(f"the label on {target} on A", lambda: a.nodes()[target]["metadata"][
                "labels"].get("tier") == "special", 30)
            picky = daemonset("g2")
            picky["spec"]["template"]["spec"]["nodeSelector"] = {"tier": "special"}
            b.call("/api/v1/apply", {"documents": [picky]})
            wait_for(f"g2 Running on {target} through A",
                     lambda: a.running("g2") == {target}, 60)
            assert not b.running("g2")

            # a Secret applied through A, read decrypted through B
            secret = {"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": "s1", "namespace": "default"},
                      "stringData": {"password": "hunter2"}}
            a.call("/api/v1/apply", {"documents": [secret]})
            got = wait_for("s1 on B", lambda: _get(b, "/api/v1/secrets/default/s1"), 30)
            assert got["data"]["password"] == "aHVudGVyMg=="

            # a watch on B sees what is done through A
            watch = WatchReader(b, "/api/v1/watch/configmaps?heartbeatSeconds=0.5")
            try:
                a.call("/api/v1/apply", {"documents": [configmap("c1", "one")]})
                v1 = wait_for("c1 on B", lambda: _get(b, "/api/v1/configmaps/default/c1"),
                              15)["metadata"]["resourceVersion"]
                listed = {c["metadata"]["name"]: c for c in b.call("/api/v1/configmaps")[
                    "items"]}
                assert listed["c1"]["metadata"]["resourceVersion"] == v1
                # A changes it; B's write at the version it read is now stale: 409
                assert a.call("/api/v1/apply", {"documents": [configmap("c1", "two")]}
                              )["results"][0]["action"] == "configured"
                code, err = _status(b, "/api/v1/apply",
                                    {"documents": [configmap("c1", "three", v1)]})
                assert code == 409, (code, err)
                assert "modified" in err["error"], err
                v2 = wait_for("c1 two on B", lambda: _cm(b, "c1", "two"), 30)["metadata"][
                    "resourceVersion"]
                # at the current version the write goes through (and A sees it)
                code, _ = _status(b, "/api/v1/apply",
                                  {"documents": [configmap("c1", "three", v2)]})
                assert code == 200
                assert wait_for("c1 three on A", lambda: _cm(a, "c1", "three"), 30)
                # all or nothing: a stale document refuses the call before any write
                code, _ = _status(a, "/api/v1/apply", {"documents": [
                    configmap("c4", "x"), configmap("c1", "four", v1)]})
                assert code == 409
                assert _get(a, "/api/v1/configmaps/default/c4") is None
                # per document: the stale one refused with 409, the other applied
                out = a.call("/api/v1/apply", {"perDocument": True, "documents": [
                    configmap("c1", "four", v1), configmap("c3", "x")]})
                assert [r["status"] for r in out["results"]] == ["refused", "applied"]
                assert out["results"][0]["code"] == 409
                _status(a, "/api/v1/configmaps/default/c1", method="DELETE")
                assert wait_for("c1 gone from B", lambda: _get(
                    b, "/api/v1/configmaps/default/c1") is None, 30)
                wait_for("B's watch saw c1 added, modified and deleted", lambda: (
                    (ev := watch.events("c1")) and ev[0] == "ADDED" and "MODIFIED" in ev
                    and ev[-1] == "DELETED"), 30)
                added = next(x for x in watch.lines if x.get("type") == "ADDED"
                             and x["object"]["metadata"]["name"] == "c1")
                assert added["object"]["metadata"]["resourceVersion"] == v1
            finally:
                watch.close()
            # a watch resumed from a version seen on B, on A: only what changed since
            a.call("/api/v1/apply", {"documents": [configmap("c10", "x")]})
            seen = wait_for("c10 on B", lambda: _get(b, "/api/v1/configmaps/default/c10"),
                            30)["metadata"]["resourceVersion"]
            b.call("/api/v1/apply", {"documents": [configmap("c8", "x"), configmap("c9", "x")]})
            assert _status(b, "/api/v1/configmaps/default/c9", method="DELETE")[0] == 200
            wait_for("c8 on A, c9 gone", lambda: _get(a, "/api/v1/configmaps/default/c8")
                     and _get(a, "/api/v1/configmaps/default/c9") is None, 30)
            resumed = WatchReader(a, f"/api/v1/watch/configmaps?resourceVersion={seen}"
                                     "&heartbeatSeconds=0.5")
            try:
                wait_for("the resumed watch's catch-up", lambda: any(
                    x.get("type") == "BOOKMARK" for x in resumed.lines), 15)
                first = [(x["type"], x["object"]["metadata"]["name"]) for x in resumed.lines
                         if x.get("type") != "BOOKMARK"]
                assert sorted(first) == [("DELETED", "c9"), ("MODIFIED", "c8")], first
                b.call("/api/v1/apply", {"documents": [configmap("c8", "y")]})
                wait_for("c8 changed, on the resumed watch", lambda: resumed.events("c8")
                         == ["MODIFIED", "MODIFIED"], 30)
            finally:
                resumed.close()
            code, err = _status(a, "/api/v1/watch/configmaps?resourceVersion=x")
            assert code == 422, (code, err)
            # an API token made through A works through B; revoked through B, A refuses it
            made = a.call("/api/v1/apitokens", {"role": "read-only", "name": "ci"})
            code, who = _status(b, "/api/v1/whoami", token=made["token"])
            assert code == 200 and who["name"] == "ci", who
            assert _status(b, f"/api/v1/apitokens/{made['id']}", method="DELETE")[0] == 200
            assert _status(a, "/api/v1/whoami", token=made["token"])[0] == 401
            # the broker map is shared (tests/integration/test_shard_brokermap.py has
            # the moves): a broker added through B is in A's map, removed through A gone
            # from B's
            code, got = _status(b, "/api/v1/brokermap/brokers",
                                {"name": "mq-2", "url": "mqtts://127.0.0.1:1"})
            assert code == 200 and "mq-2" in got["brokers"], got
            wait_for("mq-2 in A's map", lambda: "mq-2" in a.call("/api/v1/brokermap")[
                "brokers"], 15)
            code, got = _status(a, "/api/v1/brokermap/brokers/mq-2", method="DELETE")
            assert code == 200 and "mq-2" not in got["brokers"], got
            wait_for("mq-2 gone from B's map", lambda: "mq-2" not in b.call(
                "/api/v1/brokermap")["brokers"], 15)
            # a node joining through B into a partition A holds: A learns it and its
            # credentials (the same name through A is refused) and serves it
            a_parts = {partition_of(n) for n in held[a.name]}
            index = next(i for i in range(100_000) if partition_of(f"late-{i}") in a_parts)
            late = f"late-{index}"
            token = a.call("/api/v1/jointokens", {"uses": 1})["token"]  # made on A
            code, joined = _status(b, "/api/v1/join", {"name": late, "token": token})
            assert code == 200, joined
            # its one use was counted for every shard
            code, err = _status(a, "/api/v1/join", {"name": "other-1", "token": token})
            assert code == 401 and "used up" in err["error"], (code, err)
            assert wait_for(f"{late} listed by A", lambda: late in a.nodes(), 30)
            code, err = _status(a, "/api/v1/join", {
                "name": late, "token": a.call("/api/v1/jointokens", {})["token"]})
            assert code == 409 and "already joined" in err["error"], err
            for s in shards:  # each shard's broker password file names the node
                wait_for(f"{s.name}'s password file has {late}",
                         lambda s=s: f"{late}:" in s.passwd.read_text(), 30)
            merge_broker_files(shards, fleet)
            time.sleep(2)  # the testbed broker reloads its files within a second (SIGHUP)
            keys = tmp_path / "late-keys.json"
            keys.write_text(json.dumps({late: {"key": joined["key"],
                                               **joined["credentials"]}}))
            late_args = list(sim_args)
            late_args[late_args.index("--keys") + 1] = str(keys)
            late_log = (tmp_path / "late.log").open("wb")
            late_sim = subprocess.Popen(
                [sys.executable, "-m", "testbed.simulator", "--host", "127.0.0.1",
                 "--port", str(fleet.broker.port), "--prefix", "late", "--start", str(index),
                 "--count", "1", "--heartbeat", str(HEARTBEAT), "--report-pods",
                 *late_args], stdout=late_log, stderr=subprocess.STDOUT)
            late_log.close()
            try:
                got = wait_for(f"{late} Ready on its owner", lambda: owners(shards).get(late),
                               60)
                assert got == a.name, got
                print(f"{late} joined through {b.name}, Ready on {got}")
                wait_for(f"g1 Running on {late} through {got}",
                         lambda: late in a.running("g1"), 60)
            finally:
                late_sim.terminate()
                try:
                    late_sim.wait(10)
                except subprocess.TimeoutExpired:
                    late_sim.kill()
            # a node deleted through A (it joined through B) is gone from B, and from
            # the broker password files of both
            assert _status(a, f"/api/v1/nodes/{late}", method="DELETE")[0] == 200
            wait_for(f"{late} gone from B", lambda: late not in b.nodes(), 30)
            for s in shards:
                wait_for(f"{late} gone from {s.name}'s password file",
                         lambda s=s: f"{late}:" not in s.passwd.read_text(), 30)
            # the delete of a DaemonSet through B removes its pods on A's nodes
            assert _status(b, "/api/v1/daemonsets/default/g1", method="DELETE")[0] == 200
            wait_for("g1's pods gone on A", lambda: not a.running("g1"), 60)
            # B stopped; an object deleted and one made through A meanwhile: B back
            # up drops the first (the deletion marker in KV) and holds the second
            a.call("/api/v1/apply", {"documents": [configmap("c5", "x")]})
            wait_for("c5 on B", lambda: _get(b, "/api/v1/configmaps/default/c5"), 30)
            b.proc.stop()
            assert _status(a, "/api/v1/configmaps/default/c5", method="DELETE")[0] == 200
            a.call("/api/v1/apply", {"documents": [configmap("c6", "y")]})
            b.start()
            wait_for("B ready again", lambda: b.call("/readyz"), 60)
            wait_for("B caught up: c6 there, c5 gone", lambda: _cm(b, "c6", "y") and _get(
                b, "/api/v1/configmaps/default/c5") is None, 30)
            for s in shards:
                log = s.log_text()
                assert "not applied here" not in log, log[-3000:]
    finally:
        stop_sim_and_shards(sim, shards)
        fleet.stop()


def _if(value: Any, ok: Any) -> Any:
    return value if ok(value) else None


def _cm(shard: ShardProc, name: str, value: str) -> Any:
    """The ConfigMap once it holds `value` (None before)."""
    d = _get(shard, f"/api/v1/configmaps/default/{name}")
    return d if d is not None and d.get("data", {}).get("k") == value else None


def _get(shard: ShardProc, path: str) -> Any:
    code, body = _status(shard, path)
    return body if code == 200 else None


def _status(shard: ShardProc, path: str, body: Any = None,
            method: str | None = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{shard.api}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token or shard.token}",
        "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30, context=shard.ssl) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
