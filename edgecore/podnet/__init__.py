"""The pod network (bridge, a namespace and an address per pod, NAT, hostPorts)."""

from edgecore.podnet.netns import connect_in_netns
from edgecore.podnet.network import (
    HostPort,
    NetworkError,
    NetworkUnsupported,
    PodAddress,
    PodNetwork,
)

__all__ = ["HostPort", "NetworkError", "NetworkUnsupported", "PodAddress", "PodNetwork",
           "connect_in_netns"]
