"""Idle link cost per node, measured by packet capture (issue 16, "a quieter link").

`python -m testbed.bench_idle` (root; tcpdump, and what `testbed up` needs) starts a
secure one-cloud fleet of two agents at their defaults (heartbeat, keepalive, telemetry;
TLS, sealed messages), each in its own network namespace on the testbed bridge, puts
`--pods` busybox pods on the second one, lets everything settle, then captures every
frame between each agent's address and the broker on the bridge for `--duration`
seconds and prints, per node and direction, bytes, frames and bit/s (whole frames:
Ethernet, IP, TCP, TLS, MQTT), with the load average.

Targets (issue 16): both directions together at most 60 bit/s with 0 pods and
100 bit/s with 10 pods. A program that prints figures, not a timed test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testbed.fleet import Fleet, FleetSettings

PCAP_HEADER = 24
PACKET_HEADER = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len (little-endian)


def frames(pcap: Path) -> list[tuple[float, int, str, str]]:
    """(time, frame length, source IPv4, destination IPv4) of each Ethernet/IPv4 frame."""
    data = pcap.read_bytes()
    if len(data) < PCAP_HEADER:
        return []
    magic = data[:4]
    if magic not in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        raise ValueError(f"{pcap}: not a little-endian pcap file")
    nano = magic == b"\x4d\x3c\xb2\xa1"
    out = []
    off = PCAP_HEADER
    while off + PACKET_HEADER.size <= len(data):
        sec, frac, incl, orig = PACKET_HEADER.unpack_from(data, off)
        off += PACKET_HEADER.size
        pkt = data[off:off + incl]
        off += incl
        if len(pkt) < 34 or pkt[12:14] != b"\x08\x00":
            continue
        src = ".".join(str(b) for b in pkt[26:30])
        dst = ".".join(str(b) for b in pkt[30:34])
        out.append((sec + frac / (1e9 if nano else 1e6), orig, src, dst))
    return out


def pod(name: str, image: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": "idle"}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image,
                                     "command": ["sleep", "86400"]}]}}


def load() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0,
                    help="capture window, seconds (default 600)")
    ap.add_argument("--settle", type=float, default=90.0,
                    help="seconds after the pods run before the capture starts")
    ap.add_argument("--pods", type=int, default=10, help="pods on the second node")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep-pcap", action="store_true", help="keep the capture file")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench idle captures packets and runs containers: run it as root")
    if shutil.which("tcpdump") is None:
        sys.exit("bench idle needs tcpdump")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench idle: terminated"))
    from edgecore.config import AgentSettings

    defaults = AgentSettings(node="x", state_dir=Path("/nonexistent"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-idle-"))
    f = Fleet(FleetSettings(nodes=2, workdir=workdir, heartbeat_s=defaults.heartbeat_s,
                            use_netns=True))
    f.start()
    pcap = workdir / "idle.pcap"
    try:
        f.wait_nodes_ready(timeout=120)
        quiet, busy = f.agents[0], f.agents[1]
        if args.pods:
            f.apply([pod(f"idle-{i}", f.image, busy.name) for i in range(args.pods)])
            f.wait(lambda: sum(p["status"].get("phase") == "Running"
                               for p in f.pods("bench=idle")) == args.pods,
                   timeout=300, what=f"{args.pods} pods Running")
        assert f.net is not None and f.broker is not None
        print(f"agents at their defaults: heartbeat {defaults.heartbeat_s:g} s, MQTT keepalive "
              f"{defaults.mqtt_keepalive_s} s, telemetry point every "
              f"{defaults.telemetry_point_s} s; settling {args.settle:g} s", flush=True)
        time.sleep(args.settle)
        ports = [p for p in (f.broker.port, f.broker.cert_port) if p]
        cap = subprocess.Popen(
            ["tcpdump", "-i", f.net.bridge, "-s", "96", "-U", "-w", str(pcap), "-q",
             " or ".join(f"tcp port {p}" for p in ports)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.0)  # tcpdump attaches
        t0 = time.time()
        time.sleep(args.duration)
        t1 = time.time()
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=30)
        got = [x for x in frames(pcap) if t0 <= x[0] <= t1]
        span = t1 - t0
        print(f"capture on {f.net.bridge}: {span:.0f} s, whole frames; {load()}")
        for agent, pods in ((quiet, 0), (busy, args.pods)):
            ip = agent.address
            up = [n for _, n, s, _ in got if s == ip]
            down = [n for _, n, _, d in got if d == ip]
            total = 8 * (sum(up) + sum(down)) / span
            print(f"  {agent.name} ({pods} pods): up {sum(up)} B in {len(up)} frames "
                  f"({8 * sum(up) / span:.1f} bit/s), down {sum(down)} B in {len(down)} "
                  f"frames ({8 * sum(down) / span:.1f} bit/s); both {total:.1f} bit/s "
                  f"(target {60 if pods == 0 else 100})", flush=True)
    finally:
        f.stop()
        if not args.keep_pcap:
            pcap.unlink(missing_ok=True)
        else:
            print(f"capture kept: {pcap}")


if __name__ == "__main__":
    main()
