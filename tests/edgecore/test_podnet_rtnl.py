"""The pod side of a pod's network over rtnetlink (edgecore/podnet/rtnl.py), in a real
network namespace: the same result as the `ip -batch` it replaces, and a refusal that
names the request and the kernel's reason."""

from __future__ import annotations

import errno
import functools
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from edgecore.podnet.netns import in_netns
from edgecore.podnet.rtnl import configure_pod_side

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"efrtnl-{uuid.uuid4().hex[:8]}"
    veth = f"efr{name[-8:]}"
    ip("netns", "add", name)
    try:
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)


def test_lo_and_eth0_up_address_and_default_route(netns: str) -> None:
    configure = functools.partial(configure_pod_side, iface="eth0", address="10.126.3.7/24",
                                  gateway="10.126.3.1")
    in_netns(f"/run/netns/{netns}", configure)
    assert ",UP" in ip("-n", netns, "link", "show", "dev", "lo")
    assert ",UP" in ip("-n", netns, "link", "show", "dev", "eth0")  # admin up, peer too
    assert " 10.126.3.7/24 " in ip("-n", netns, "-o", "-4", "addr", "show", "dev", "eth0")
    assert ip("-n", netns, "route", "show", "default").split()[:5] == [
        "default", "via", "10.126.3.1", "dev", "eth0"]
    # This thread went back to its own namespace: no eth0 of the pod's here.
    assert "10.126.3.7" not in ip("-o", "-4", "addr", "show")
    with pytest.raises(OSError) as err:  # the address is there already: as `ip` says
        in_netns(f"/run/netns/{netns}", configure)
    assert err.value.errno == errno.EEXIST and "add address 10.126.3.7/24" in str(err.value)
