"""A real testbed fleet for the tests that need one (integration, corpus, console):
mosquitto, registry, cloudcore and agents in network namespaces, real crun."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.broker import BrokerSecurity, Mosquitto
from testbed.fleet import Fleet, FleetSettings

NEEDS = ("mosquitto", "crun", "conmon", "skopeo", "umoci", "docker-registry")


def missing_tools(needs: tuple[str, ...] = NEEDS) -> list[str]:
    return [b for b in needs if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


class TwoBrokerFleet(Fleet):
    """A secure fleet on two brokers (issue 14, proposal 0007): `a` is the fleet's own
    mosquitto, `b` a second one on the same addresses that reads the same password file
    and ACL (which cloudcore keeps) and the same TLS files; cloudcore starts with
    `--broker a=... --broker b=...`, and the agents run from the broker list they joined
    with (no `--mqtt-host/--mqtt-port`, which would pin them to one broker)."""

    def __init__(self, settings: FleetSettings) -> None:
        super().__init__(settings)
        self.broker_b: Mosquitto | None = None

    def url(self, mq: Mosquitto) -> str:
        return f"mqtts://{mq.host}:{mq.port}"

    @property
    def tier(self) -> dict[str, Mosquitto]:
        assert self.broker is not None and self.broker_b is not None
        return {"a": self.broker, "b": self.broker_b}

    def start_cloud(self) -> None:
        a = self.broker
        assert a is not None and self.secure, "a two-broker fleet is a secure one"
        if self.broker_b is None:
            b = Mosquitto(hosts=a.hosts, workdir=self.workdir / "mosquitto-b",
                          security=BrokerSecurity(), shared_auth=(a.passwd, a.acl))
            for f in ("ca.crt", "broker.crt", "broker.key"):
                shutil.copy(a.tls_dir / f, b.tls_dir / f)
            self.broker_b = b.start()
            self.s.cloud_args = (*self.s.cloud_args, "--broker", f"a={self.url(a)}",
                                 "--broker", f"b={self.url(b)}")
        super().start_cloud()

    def agent_argv(self, name: str, state_dir: Path) -> list[str]:
        argv = super().agent_argv(name, state_dir)
        for flag in ("--mqtt-host", "--mqtt-port"):
            i = argv.index(flag)
            del argv[i:i + 2]
        return argv

    def stop(self) -> None:
        super().stop()
        if self.broker_b is not None:
            self.broker_b.stop()
            self.broker_b.remove()
            self.broker_b = None


@contextlib.contextmanager
def real_fleet(settings: FleetSettings, *, needs: tuple[str, ...] = NEEDS,
               kind: type[Fleet] = Fleet) -> Iterator[Fleet]:
    """The fleet of `settings` (a `kind`, e.g. `TwoBrokerFleet`) started with every node
    Ready, stopped on exit; skipped without root, failed (not skipped) when a system
    package is missing."""
    if os.geteuid() != 0:
        pytest.skip("the fleet runs real containers and network namespaces: needs root")
    if missing := missing_tools(needs):
        pytest.fail(f"missing system packages: {missing} (make test installs them)")
    f = kind(settings)
    f.start()
    try:
        f.wait_nodes_ready(timeout=60)
        yield f
    finally:
        f.stop()
