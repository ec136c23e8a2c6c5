"""In-process figure for issue 14 (not a test): the sync hub's retry bookkeeping while
cloudcore's publish queue stays full.

N nodes get a delta in batches of 100; after each batch the retry loop wakes (as every
send made it before the fix) with every earlier retry already due and the queue still
full; then the queue drains and the late deltas are resent. Prints the time of the sends,
of the wake-ups and of the drain. Compare two trees in one sitting:

    PYTHONSAFEPATH=1 PYTHONPATH=/tmp/before .venv/bin/python tests/cloudcore/bench_hub_retry.py
    PYTHONSAFEPATH=1 PYTHONPATH=$PWD .venv/bin/python tests/cloudcore/bench_hub_retry.py
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # cloudcore_fakes

from cloudcore_fakes import FakeStore, add_node, daemonset, make_fleet

from cloudcore.config import SyncSettings
from cloudcore.metrics import Metrics
from cloudcore.synchub.hub import SyncHub
from shared.models import parse_object


def main(n: int) -> None:
    logging.disable(logging.WARNING)
    fleet = make_fleet()
    now = [0.0]
    backlog = [1000]
    settings = SyncSettings()
    settings.ack_timeout = 1.0
    hub = SyncHub(nodes=fleet, desired=fleet.desired_sets, store=FakeStore(),  # type: ignore[arg-type]
                  settings=settings, metrics=Metrics(), clock=lambda: now[0])
    names = [f"n{i}" for i in range(n)]
    for name in names:
        add_node(fleet, name)
    fleet.apply([parse_object(daemonset())])  # no transport yet: desired sets, no sends
    hub.drop_links(names)  # ... and no delivery state either: the loop below sends
    hub._retry.clear()
    hub.attach(lambda *args: None, backlog=lambda: backlog[0])
    t_send = t_wake = 0.0
    for b in range(0, n, 100):
        t0 = time.perf_counter()
        for name in names[b:b + 100]:
            hub._send_delta(name, base=0)
        t1 = time.perf_counter()
        now[0] += 5.0  # everything sent so far is past its ack deadline
        hub.retry_due(now[0])
        t_wake += time.perf_counter() - t1
        t_send += t1 - t0
    backlog[0] = 0
    now[0] += 5.0
    t0 = time.perf_counter()
    resent = hub.retry_due(now[0])
    t_drain = time.perf_counter() - t0
    print(f"n={n}: sends {t_send * 1e3:.0f} ms, {n // 100} wake-ups under backlog "
          f"{t_wake * 1e3:.0f} ms, drain resent {resent} in {t_drain * 1e3:.0f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
