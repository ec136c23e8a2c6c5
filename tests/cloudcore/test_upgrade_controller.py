"""The AgentUpgrade controller (cloudcore/fleet/upgrades.py) with a fake clock and fake
node reports: batches, maxUnavailable, offline nodes, failure -> abort -> told nodes
sent back, the threshold, pause, deadlines, ownership and a cloud restart."""

from __future__ import annotations

from typing import Any

import pytest
from cloudcore_fakes import FakeStore, add_node, make_fleet

from shared.entries import AGENT_RELEASE_KEY, parse_agent_release
from shared.errors import ObjectError
from shared.models import AgentUpgrade, parse_object

OLD, NEW = "0.9.0", "0.9.1"
IMAGE = "reg.example:5000/edgefed/agent:0.9.1"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def upgrade_doc(*, name: str = f"agent-{NEW}", version: str = NEW, batch: int | str = 1,
                threshold: int | str = 0, deadline: int = 120, paused: bool = False,
                selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "edgefed.io/v1", "kind": "AgentUpgrade", "metadata": {"name": name},
            "spec": {"version": version, "image": IMAGE, "maxUnavailable": batch,
                     "failureThreshold": threshold, "healthDeadlineSeconds": deadline,
                     "paused": paused, "selector": {"matchLabels": selector or {}}}}


class World:
    """A fleet whose fake agents run OLD; `agents[node]` says what each does when told:
    "ok" (upgrades and reports Healthy), "crash" (reports RolledBack), "refuse" (reports
    Failed), "silent" (never reports)."""

    def __init__(self, nodes: int, *, store: FakeStore | None = None,
                 labels: dict[str, dict[str, str]] | None = None) -> None:
        self.store = store or FakeStore()
        self.fleet = make_fleet(self.store)
        self.clock = Clock()
        self.fleet.upgrades.clock = self.clock
        self.names = [f"n{i:02d}" for i in range(1, nodes + 1)]
        self.agents = dict.fromkeys(self.names, "ok")
        self.running = dict.fromkeys(self.names, OLD)
        self.handled: dict[str, Any] = {}
        for n in self.names:
            add_node(self.fleet, n, labels=(labels or {}).get(n))
            self.fleet.node_status(n, {"agentVersion": OLD})

    def apply(self, doc: dict[str, Any]) -> None:
        self.fleet.apply([parse_object(doc)])

    def entry(self, node: str) -> Any:
        nd = self.fleet.desired.get(node)
        item = nd.items.get(AGENT_RELEASE_KEY) if nd is not None else None
        return None if item is None else item[0]

    def told(self) -> list[str]:
        return [n for n in self.names if self.entry(n) is not None]

    def status(self, name: str = f"agent-{NEW}") -> Any:
        au = self.fleet.objects.agentupgrades[name]
        assert au.status is not None
        return au.status

    def step(self, seconds: float = 1.0) -> None:
        """Every online fake agent acts on its entry once, then the cloud ticks."""
        for n in self.names:
            node = self.fleet.nodes.get(n)
            value = self.entry(n)
            if node is None or node.status.ready != "Ready" or value is None:
                continue
            if self.handled.get(n) == value:
                continue
            self.handled[n] = value
            rel = parse_agent_release(AGENT_RELEASE_KEY, value)
            previous = self.running[n]
            behaviour = self.agents[n] if rel.image is not None else "ok"
            if behaviour == "silent":
                continue
            if behaviour == "ok":
                self.running[n] = rel.version
                report = {"version": rel.version, "phase": "Healthy", "message": "",
                          "previous": previous}
            elif behaviour == "crash":
                report = {"version": rel.version, "phase": "RolledBack",
                          "message": "exit 3 at start: ImportError", "previous": previous}
            else:
                report = {"version": rel.version, "phase": "Failed",
                          "message": "signature: no trusted key", "previous": previous}
            self.fleet.node_status(n, {"agentVersion": self.running[n],
                                       "agentUpgrade": report})
        self.clock.t += seconds
        self.fleet.expire(0.0)

    def offline(self, node: str) -> None:
        self.fleet.mark_not_ready(node, reason="Will", message="gone")

    def online(self, node: str) -> None:
        self.fleet.mark_ready(node)

    def restarted(self) -> World:
        records: dict[str, dict[str, Any]] = {}
        for (db, key), value in self.store.data.items():
            records.setdefault(db, {})[key] = value
        again = World(0)
        again.store = self.store
        again.fleet = make_fleet(self.store)
        again.fleet.upgrades.clock = again.clock
        again.fleet.load(records)
        again.names, again.agents, again.running = self.names, self.agents, self.running
        again.handled = dict(self.handled)
        for n in self.names:
            again.fleet.mark_ready(n)
        return again


def test_batches_of_max_unavailable_in_name_order_until_complete() -> None:
    w = World(5)
    w.apply(upgrade_doc(batch=2))
    assert w.told() == ["n01", "n02"]
    value = w.entry("n01")
    assert value == {"version": NEW, "image": IMAGE, "upgrade": f"agent-{NEW}",
                     "deadline": 120}
    assert w.status().in_progress == 2
    assert w.status().phase == "Progressing"
    w.step()  # n01, n02 upgrade; the tick tells n03, n04
    assert w.told() == ["n01", "n02", "n03", "n04"]
    assert w.status().upgraded == 2
    w.step()
    w.step()
    st = w.status()
    assert (st.phase, st.total, st.upgraded, st.in_progress, st.failed) == \
        ("Complete", 5, 5, 0, 0)
    assert all(w.running[n] == NEW for n in w.names)
    reasons = [e["reason"] for e in w.fleet.events.list(obj=f"AgentUpgrade/agent-{NEW}")]
    assert reasons.count("AgentUpgradeBatch") == 3
    assert reasons[-1] == "AgentUpgradeComplete"


def test_percentage_and_selector() -> None:
    labels = {n: {"site": "berlin" if i % 2 else "paris"}
              for i, n in enumerate([f"n{i:02d}" for i in range(1, 9)])}
    w = World(8, labels=labels)
    w.apply(upgrade_doc(batch="50%", selector={"site": "berlin"}))
    berlin = [n for n in w.names if labels[n]["site"] == "berlin"]
    assert w.told() == berlin[:2]  # 50 % of the 4 selected
    assert w.status().total == 4
    w.step()
    w.step()
    assert w.status().phase == "Complete"
    assert set(w.told()) == set(berlin)
    assert all(w.running[n] == OLD for n in w.names if n not in berlin)


def test_a_node_already_at_the_version_is_never_told() -> None:
    w = World(3)
    w.fleet.node_status("n02", {"agentVersion": NEW})
    w.running["n02"] = NEW
    w.apply(upgrade_doc(batch=5))
    assert w.told() == ["n01", "n03"]
    w.step()
    assert (w.status().phase, w.status().upgraded) == ("Complete", 3)


def test_offline_nodes_wait_without_holding_a_batch_and_upgrade_when_back() -> None:
    w = World(3)
    w.offline("n01")
    w.apply(upgrade_doc(batch=1))
    assert w.told() == ["n02"]  # n01 waits; it does not hold the batch
    assert w.status().waiting == 1
    w.step()
    w.step()
    st = w.status()
    assert (st.phase, st.upgraded, st.waiting) == ("Complete", 2, 1)
    assert "1 waiting" in (st.message or "")
    w.online("n01")
    w.step()  # the tick after it is back tells it
    assert "n01" in w.told()
    w.step()
    assert w.running["n01"] == NEW
    assert (w.status().phase, w.status().upgraded, w.status().waiting) == ("Complete", 3, 0)


def test_a_told_node_that_goes_offline_keeps_its_entry_and_its_deadline_pauses() -> None:
    w = World(2)
    w.agents["n01"] = "silent"
    w.apply(upgrade_doc(batch=1, deadline=10))
    w.step()  # n01 told, says nothing
    w.offline("n01")
    w.step()
    assert w.entry("n01") is not None
    assert w.told() == ["n01", "n02"]  # n01 away: n02 is told meanwhile
    for _ in range(200):
        w.step()
    st = w.status()
    assert st.failed == 0  # away the whole time: never timed out
    assert st.waiting == 1
    w.online("n01")
    w.step()  # back, still silent: its Ready time starts again from its return
    assert w.status().failed == 0
    assert w.status().in_progress == 1
    w.agents["n01"] = "ok"
    w.handled.pop("n01")
    w.step()
    assert (w.status().phase, w.status().upgraded) == ("Complete", 2)


def test_crash_aborts_and_upgraded_nodes_are_told_to_go_back() -> None:
    w = World(5)
    w.agents["n03"] = "crash"
    w.apply(upgrade_doc(batch=2))
    w.step()  # n01, n02 upgrade; n03, n04 told
    w.step()  # n03 reports RolledBack -> abort
    st = w.status()
    assert st.phase == "Aborted"
    assert st.failed == 1
    assert [(f.node, f.reason) for f in st.failures] == [("n03", "RolledBack")]
    assert "ImportError" in st.failures[0].message
    # every told node is sent back to what it ran; n05 was never told
    for n in ("n01", "n02", "n03", "n04"):
        assert w.entry(n) == {"version": OLD, "image": None, "upgrade": f"agent-{NEW}",
                              "deadline": 120}
    assert w.entry("n05") is None
    w.step()
    assert all(w.running[n] == OLD for n in w.names)
    st = w.status()
    assert st.rolled_back == 4
    assert "4 of 4" in (st.message or "")
    events = w.fleet.events.list(obj=f"AgentUpgrade/agent-{NEW}")
    aborted = [e for e in events if e["reason"] == "AgentUpgradeAborted"]
    assert len(aborted) == 1
    assert "n03: RolledBack: exit 3 at start: ImportError" in aborted[0]["message"]
    for _ in range(3):
        w.step()
    assert w.entry("n05") is None  # no new batches after an abort


def test_failures_up_to_the_threshold_are_tolerated() -> None:
    w = World(4)
    w.agents["n01"] = "refuse"
    w.apply(upgrade_doc(batch=1, threshold=1))
    for _ in range(6):
        w.step()
    st = w.status()
    assert (st.phase, st.upgraded, st.failed) == ("Complete", 3, 1)
    assert st.failures[0].reason == "Failed"
    assert w.entry("n01")["version"] == NEW  # failed nodes keep theirs: they stay back


def test_a_silent_node_fails_after_the_deadline_plus_margin_of_ready_time() -> None:
    from cloudcore.fleet.upgrades import DEADLINE_MARGIN

    w = World(2)
    w.agents["n01"] = "silent"
    w.apply(upgrade_doc(batch=1, deadline=30))
    limit = 30 + DEADLINE_MARGIN
    t = 0.0
    while t < limit - 1:
        w.step(5.0)
        t += 5.0
    assert w.status().failed == 0
    assert w.told() == ["n01"]  # n01 holds the batch while it is in progress
    w.step(5.0)
    w.step(5.0)
    st = w.status()
    assert st.phase == "Aborted"
    assert st.failures[0].reason == "Timeout"
    assert f"{limit:g} s" in st.failures[0].message


def test_pause_stops_new_batches_and_resume_goes_on() -> None:
    w = World(3)
    w.apply(upgrade_doc(batch=1))
    w.apply(upgrade_doc(batch=1, paused=True))
    w.step()
    w.step()
    assert w.told() == ["n01"]
    assert (w.status().phase, w.status().upgraded) == ("Paused", 1)
    w.apply(upgrade_doc(batch=1))
    w.step()
    w.step()
    w.step()
    assert w.status().phase == "Complete"


def test_version_cannot_change_and_delete_removes_the_entries() -> None:
    w = World(2)
    w.apply(upgrade_doc(batch=1))
    with pytest.raises(ObjectError, match=r"spec\.version cannot change") as err:
        w.apply({**upgrade_doc(), "spec": {**upgrade_doc()["spec"], "version": "1.0"}})
    assert err.value.field == "spec.version"
    assert w.told() == ["n01"]
    w.fleet.delete("AgentUpgrade", None, f"agent-{NEW}")
    assert w.told() == []
    assert not [k for (db, k) in w.store.data if db == "upgradenodes"]


def test_a_stale_failed_report_is_not_news_but_a_new_one_is() -> None:
    w = World(1)
    w.fleet.node_status("n01", {"agentUpgrade": {"version": NEW, "phase": "Failed",
                                                 "message": "old attempt"}})
    w.agents["n01"] = "silent"
    w.apply(upgrade_doc(batch=1))
    w.step()
    assert w.status().failed == 0  # the report from before it was told says nothing
    w.fleet.node_status("n01", {"agentUpgrade": {"version": NEW, "phase": "Failed",
                                                 "message": "digest mismatch"}})
    w.step()
    assert w.status().failures[0].message == "digest mismatch"


def test_the_newest_upgrade_owns_a_node_selected_by_two() -> None:
    w = World(2)
    w.apply(upgrade_doc(batch=5))
    w.step()
    assert w.status().phase == "Complete"
    w.fleet.objects.agentupgrades[f"agent-{NEW}"].metadata.creation_timestamp = \
        "2020-01-01T00:00:00Z"
    w.apply(upgrade_doc(name="agent-1.0.0", version="1.0.0", batch=5))
    assert {w.entry(n)["upgrade"] for n in w.names} == {"agent-1.0.0"}
    w.step()
    assert w.status("agent-1.0.0").phase == "Complete"
    assert all(w.running[n] == "1.0.0" for n in w.names)
    assert w.status().total == 0  # the older one leaves the nodes to the newer


def test_a_restarted_cloud_remembers_told_nodes_failures_and_the_abort() -> None:
    w = World(4)
    w.agents["n02"] = "crash"
    w.apply(upgrade_doc(batch=2))
    w.step()  # n01 done, n02 RolledBack -> abort
    assert w.status().phase == "Aborted"
    again = w.restarted()
    again.step()
    st = again.status()
    assert st.phase == "Aborted"
    assert [f.node for f in st.failures] == ["n02"]
    assert again.entry("n01") == {"version": OLD, "image": None,
                                  "upgrade": f"agent-{NEW}", "deadline": 120}
    again.step()
    assert again.running["n01"] == OLD
    assert again.entry("n03") is None


def test_a_restart_mid_rollout_goes_on_from_where_it_was() -> None:
    w = World(3)
    w.apply(upgrade_doc(batch=1))
    w.step()  # n01 done; n02 told
    again = w.restarted()
    assert again.told() == ["n01", "n02"]
    for _ in range(3):
        again.step()
    assert again.status().phase == "Complete"
    assert isinstance(again.fleet.objects.agentupgrades[f"agent-{NEW}"], AgentUpgrade)


def test_a_big_batch_is_told_over_several_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudcore.fleet import upgrades

    monkeypatch.setattr(upgrades, "MAX_TELL_PER_TICK", 2)
    w = World(5)
    w.agents = dict.fromkeys(w.names, "silent")
    w.apply(upgrade_doc(batch=5))
    assert w.told() == ["n01", "n02"]
    w.step()
    assert w.told() == ["n01", "n02", "n03", "n04"]
    w.step()
    assert w.told() == w.names
    assert w.status().in_progress == 5


def test_nodes_that_join_or_are_relabelled_later_follow_the_selector() -> None:
    labels = {"n01": {"site": "berlin"}, "n02": {"site": "berlin"}, "n03": {"site": "paris"}}
    w = World(3, labels=labels)
    w.apply(upgrade_doc(batch=5, selector={"site": "berlin"}))
    w.step()
    assert (w.status().phase, w.status().total) == ("Complete", 2)
    # a new berlin node joins: level-triggered, it is upgraded too
    add_node(w.fleet, "n04", labels={"site": "berlin"})
    w.fleet.node_status("n04", {"agentVersion": OLD})
    w.names.append("n04")
    w.agents["n04"], w.running["n04"] = "ok", OLD
    w.step()
    assert "n04" in w.told()
    assert (w.status().total, w.status().phase) == (3, "Progressing")
    w.step()
    assert (w.status().phase, w.status().upgraded) == ("Complete", 3)
    # paris becomes berlin: selected now; a node leaving the selector is no longer counted
    w.fleet.patch_node("n03", labels={"site": "berlin"})
    w.fleet.patch_node("n04", labels={"site": "rome"})
    w.step()
    assert "n03" in w.told()
    w.step()
    assert w.running["n03"] == NEW
    st = w.status()
    assert (st.phase, st.total, st.upgraded) == ("Complete", 4, 4)  # n04 stays told
    # a deleted node is forgotten with its entry
    w.fleet.delete("Node", None, "n01")
    w.step()
    assert w.status().total == 3
    assert not [k for (db, k) in w.store.data if db == "upgradenodes" and k.endswith("/n01")]


def test_passes_over_every_node_go_a_slice_a_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudcore.fleet import upgrades

    monkeypatch.setattr(upgrades, "OWNER_SLICE", 2)
    monkeypatch.setattr(upgrades, "PASS_SLICE", 2)
    w = World(5)
    w.agents["n04"] = "crash"
    w.apply(upgrade_doc(batch=3))  # owners of n01, n02 in the apply's tick
    assert w.told() == []
    assert w.fleet.objects.agentupgrades[f"agent-{NEW}"].status is None
    w.step()  # owners of n03, n04
    w.step()  # owner of n05; the classifying pass starts: n01, n02
    w.step()  # n03, n04
    assert w.told() == []
    w.step()  # n05: the pass is through, the first batch goes
    assert w.told() == ["n01", "n02", "n03"]
    assert w.status().total == 5
    w.step()  # all three upgrade; n04 and n05 told
    w.step()  # n04 crashed: abort, and the pass that sends the told nodes back begins
    assert [w.entry(n)["version"] for n in w.names] == [OLD, OLD, NEW, NEW, NEW]
    for _ in range(4):
        w.step()
    st = w.status()
    assert st.phase == "Aborted"
    assert {n: w.entry(n)["version"] for n in w.names} == dict.fromkeys(w.names, OLD)
    assert all(w.running[n] == OLD for n in w.names)
    assert st.rolled_back == 5


def test_metrics_count_upgrades_nodes_and_versions() -> None:
    from cloudcore.metrics import upgrade_gauges

    w = World(3)
    w.agents["n02"] = "crash"
    w.apply(upgrade_doc(batch=1, threshold=1))
    for _ in range(4):
        w.step()
    got = {(name, labels): v for name, labels, v in upgrade_gauges(w.fleet)}
    assert got[("cloudcore_agent_upgrades", (("phase", "Complete"),))] == 1
    assert got[("cloudcore_agent_upgrade_nodes", (("state", "upgraded"),))] == 2
    assert got[("cloudcore_agent_upgrade_nodes", (("state", "failed"),))] == 1
    assert got[("cloudcore_agent_versions", (("version", NEW),))] == 2
    assert got[("cloudcore_agent_versions", (("version", OLD),))] == 1
