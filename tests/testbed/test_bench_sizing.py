"""How `testbed bench sync`/`storm` size a fleet (issue 14): brokers by sessions per
broker, simulator processes by the open-file limit, sizes that cannot work refused up
front with the numbers; and the partition order the bench hands the simulators when the
cloud serves no map is the one cloudcore's `BrokerMap.spread` makes. Pure; no process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.brokermap import BrokerMap
from testbed.bench import _stats, nodes_past, plan
from testbed.broker import contract_partitions


@pytest.mark.parametrize(("nodes", "brokers", "procs"), [
    (1, 1, 1), (300, 1, 2), (5_000, 1, 2), (15_000, 1, 2), (15_001, 2, 2),
    (20_000, 2, 2), (40_000, 3, 3), (100_000, 7, 6)])
def test_sizes_by_default(nodes: int, brokers: int, procs: int) -> None:
    p = plan(nodes, limit=20_000)
    assert (p.brokers, p.procs) == (brokers, procs)
    assert p.per_proc + 64 <= 20_000
    assert p.per_proc * p.procs >= nodes


def test_given_counts_win() -> None:
    p = plan(10_000, brokers=3, procs=5, limit=20_000)
    assert (p.brokers, p.procs, p.per_proc) == (3, 5, 2_000)


def test_too_few_simulators_is_refused_with_the_numbers() -> None:
    # issue 14: two simulators of 50,000 sessions each exited at once, and the bench
    # waited out its 600 s; now it does not start
    with pytest.raises(ValueError) as exc:
        plan(100_000, procs=2, limit=20_000)
    msg = str(exc.value)
    assert "--procs 2" in msg and "50000 sessions" in msg and "limit is 20000" in msg
    assert "at least 6 processes" in msg


def test_too_few_brokers_is_refused_with_the_numbers() -> None:
    with pytest.raises(ValueError) as exc:
        plan(25_000, brokers=1, limit=20_000)
    assert "--brokers 1" in str(exc.value) and "at least 2 brokers" in str(exc.value)


@pytest.mark.parametrize("count", [1, 2, 7, 11])
def test_contract_partitions_match_the_clouds_spread(count: int) -> None:
    names = [f"mq-{i}" for i in range(count)]  # mq-10 sorts before mq-2
    spread = BrokerMap.spread({n: f"mqtts://127.0.0.1:{8000 + i}" for i, n in
                               enumerate(names)})
    assert contract_partitions(names) == [list(p) for p in spread.partitions]


def test_a_phase_ends_when_every_node_is_past_its_gen(tmp_path: Path) -> None:
    # two simulators: in the first, 2 of 3 nodes got two deltas (gen 2) and one none
    # (gen 0); counting applies (4 > 3 nodes) would end the phase, counting nodes not
    (tmp_path / "a.json").write_text(json.dumps(
        {"connected": 3, "gens": {"0": 3, "1": 2, "2": 2}, "at_gen": {"0": 1, "2": 2}}))
    (tmp_path / "b.json").write_text(json.dumps(
        {"connected": 2, "gens": {"0": 2, "1": 2}, "at_gen": {"1": 2}}))
    st = _stats([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "missing.json"])
    assert st["read"] == 2 and st["connected"] == 5
    assert sum(st["gens"].values()) - 5 >= 5  # what the old count saw: "done"
    assert nodes_past(st, 0) == 4  # one node has not moved: not done
    assert nodes_past(st, 1) == 2
