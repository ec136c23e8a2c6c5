"""The pod side of a pod's network, set over rtnetlink from this process.

Why: an `ip -n NS -batch` process for `lo` up, the address, `eth0` up and the default
route costs about 5 ms on a quiet device and 10-20 ms on a busy one, on the start path
of every pod with a network of its own (issue 16). The same four requests on a netlink
socket opened inside the namespace (`in_netns`, from a worker thread) cost well under a
millisecond. The host side (the namespace itself, the veth pair, the bridge) stays with
`ip`: it needs a namespace made and bind-mounted, which `ip netns add` does well.

Only what `PodNetwork` needs: RTM_NEWLINK (up), RTM_NEWADDR, RTM_NEWROUTE, each sent
with NLM_F_ACK and its answer read before the next, so a refusal raises `OSError`
naming the request and the kernel's errno (EEXIST for an address or route already
there, as `ip` says "File exists").
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

__all__ = ["configure_pod_side"]

_NLMSG_ERROR = 2
_RTM_NEWLINK = 16
_RTM_NEWADDR = 20
_RTM_NEWROUTE = 24
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_IFF_UP = 0x1
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_RTA_OIF = 4
_RTA_GATEWAY = 5
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3
_RT_SCOPE_UNIVERSE = 0
_RTN_UNICAST = 1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid


def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


class _Rtnl:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, body: bytes, *, what: str, flags: int = 0) -> None:
        self.seq += 1
        self.sock.send(_HEADER.pack(_HEADER.size + len(body), kind,
                                    _NLM_F_REQUEST | _NLM_F_ACK | flags, self.seq, 0) + body)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _HEADER.size <= len(data):
                length, typ, _, seq, _ = _HEADER.unpack_from(data, off)
                if typ == _NLMSG_ERROR and seq == self.seq:
                    (err,) = struct.unpack_from("=i", data, off + _HEADER.size)
                    if err:
                        raise OSError(-err, f"{what}: {os.strerror(-err)}")
                    return
                if length < _HEADER.size:
                    raise OSError(0, f"{what}: malformed netlink answer")
                off += (length + 3) & ~3

    def link_up(self, index: int, *, what: str) -> None:
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, _IFF_UP, _IFF_UP)
        self.request(_RTM_NEWLINK, body, what=what)

    def add_address(self, index: int, iface: ipaddress.IPv4Interface) -> None:
        packed = iface.ip.packed
        body = (struct.pack("=BBBBI", socket.AF_INET, iface.network.prefixlen, 0, 0, index)
                + _attr(_IFA_LOCAL, packed) + _attr(_IFA_ADDRESS, packed))
        self.request(_RTM_NEWADDR, body, what=f"add address {iface}",
                     flags=_NLM_F_CREATE | _NLM_F_EXCL)

    def add_default_route(self, gateway: ipaddress.IPv4Address, index: int) -> None:
        body = (struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, _RT_TABLE_MAIN,
                            _RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RTN_UNICAST, 0)
                + _attr(_RTA_GATEWAY, gateway.packed) + _attr(_RTA_OIF, struct.pack("=I", index)))
        self.request(_RTM_NEWROUTE, body, what=f"add default route via {gateway}",
                     flags=_NLM_F_CREATE | _NLM_F_EXCL)


def configure_pod_side(*, iface: str, address: str, gateway: str) -> None:
    """In the calling thread's network namespace: `lo` up, `address` (CIDR form) on
    `iface`, `iface` up, default route via `gateway`, as `ip -batch` with `link set lo
    up`, `addr add`, `link set IFACE up`, `route add default via`. Raises OSError."""
    nl = _Rtnl()
    try:
        index = socket.if_nametoindex(iface)  # asks this thread's namespace
        nl.link_up(socket.if_nametoindex("lo"), what="set lo up")
        nl.add_address(index, ipaddress.IPv4Interface(address))
        nl.link_up(index, what=f"set {iface} up")
        nl.add_default_route(ipaddress.IPv4Address(gateway), index)
    finally:
        nl.close()
