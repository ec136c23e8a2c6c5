"""The agent's own counters as a Prometheus text file (the textfile-collector shape).

Why a file: the agent serves no port (a device should open as few as it can), and
node_exporter's textfile collector, which fleets already run, picks up `*.prom` files
from a directory. The file is rewritten atomically every `interval` seconds and once
more when the agent stops; a scraper never sees half of it. A write the disk refuses
(full, read-only) is logged once a minute and tried again next interval: counters are
never worth the agent (a full disk is a fault the agent must survive).

What it counts is what an operator needs to see an attack or a broken peer on the
device itself: messages refused by the link (tag did not verify, malformed, addressed
to another node) and by the sync handler (a replayed or expired request, a snapshot
under an epoch the node left, a type the cloud must not send), beside the link's
connects and the desired sets applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from edgecore.link import LinkStats
from edgecore.ratelimit import RateLimitedLog
from edgecore.sync import SyncStats

log = logging.getLogger(__name__)

Sample = tuple[str, dict[str, str], float]

_HELP = {
    "edgecore_messages_received_total": ("counter", "MQTT messages received from the broker."),
    "edgecore_messages_refused_total": (
        "counter", "Messages refused before they changed anything, by reason."),
    "edgecore_link_connects_total": ("counter", "MQTT sessions established."),
    "edgecore_link_connect_failures_total": ("counter", "MQTT session attempts that failed."),
    "edgecore_desired_applied_total": ("counter", "Desired sets persisted and acked."),
    "edgecore_reports_sent_total": ("counter", "Reports published from the outbox."),
}


def samples(link: LinkStats, sync: SyncStats) -> list[Sample]:
    """Every metric of the agent, from the link's and the sync handler's counters."""
    refused = {
        "auth_failed": link.auth_failed,
        "malformed": link.malformed,
        "foreign": link.foreign,
        "replayed_request": sync.replayed_requests,
        "left_epoch": sync.refused_epochs,
        "unexpected_type": sync.unexpected,
    }
    out: list[Sample] = [("edgecore_messages_received_total", {}, float(link.received))]
    out += [("edgecore_messages_refused_total", {"reason": r}, float(n))
            for r, n in refused.items()]
    out += [
        ("edgecore_link_connects_total", {}, float(link.connects)),
        ("edgecore_link_connect_failures_total", {}, float(link.connect_failures)),
        ("edgecore_desired_applied_total", {}, float(sync.applied)),
        ("edgecore_reports_sent_total", {}, float(link.reports_sent)),
    ]
    return out


def render(node: str, items: Iterable[Sample]) -> str:
    """The Prometheus text format (0.0.4) of `items`, each labelled with the node."""
    lines: list[str] = []
    seen: set[str] = set()
    for name, labels, value in items:
        if name not in seen:
            seen.add(name)
            kind, text = _HELP.get(name, ("untyped", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        all_labels = {"node": node, **labels}
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in all_labels.items())
        lines.append(f"{name}{{{inner}}} {value:g}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def write(path: Path, text: str) -> None:
    """Replace `path` atomically (0644: counters hold nothing secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def run(path: Path, *, node: str, collect: Callable[[], list[Sample]],
              interval: float) -> None:
    """Work until cancelled: rewrite the file every `interval` s, and once at the end."""
    rlog = RateLimitedLog(log)
    try:
        while True:
            try:
                await asyncio.to_thread(write, path, render(node, collect()))
            except OSError as exc:
                rlog.warning("write", "cannot write the metrics file %s: %s", path, exc)
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(OSError):
            write(path, render(node, collect()))
