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
connects and the desired sets applied; the agent's RSS and CPU; and the scraper's
counters (`edgecore.scrape`). The same samples go to the cloud in each metrics batch
(issue 17), where Prometheus scrapes them from cloudcore's `/metrics/edge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from edgecore.link import LinkStats
from edgecore.ratelimit import RateLimitedLog
from edgecore.scrape import ScrapeStats
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
    "edgecore_process_resident_memory_bytes": ("gauge", "The agent's resident memory."),
    "edgecore_process_cpu_seconds_total": ("counter", "CPU time the agent used."),
    "edgecore_scrapes_total": ("counter", "Scrapes of annotated pods' metrics."),
    "edgecore_scrape_failures_total": (
        "counter", "Pod scrapes that brought nothing, by reason (connect, timeout, http, "
                   "parse: the body was not the Prometheus text format)."),
    "edgecore_scrape_truncated_total": (
        "counter", "Pod responses over the size limit, cut at a line boundary."),
    "edgecore_scrape_series_dropped_total": (
        "counter", "Scraped series dropped by a bound (pod_limit, node_limit, batch_bytes)."),
    "edgecore_scrape_batches_total": ("counter", "Batches of scraped samples reported."),
    "edgecore_scrape_batch_bytes": ("gauge", "Estimated size of the last batch."),
    "edgecore_pod_scrape_up": ("gauge", "1 if the pod's last scrape worked, else 0."),
}


def process_samples(proc: Path = Path("/proc/self")) -> list[Sample]:
    """The agent's RSS (from statm; nothing if unreadable) and CPU seconds."""
    out: list[Sample] = []
    try:
        pages = int((proc / "statm").read_text().split()[1])
        out.append(("edgecore_process_resident_memory_bytes", {},
                    float(pages * os.sysconf("SC_PAGE_SIZE"))))
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    out.append(("edgecore_process_cpu_seconds_total", {}, float(t.user + t.system)))
    return out


def samples(link: LinkStats, sync: SyncStats,
            scrape: ScrapeStats | None = None) -> list[Sample]:
    """Every metric of the agent, from the link's and the sync handler's counters, the
    process, and the scraper's counters when it runs (`scrape`)."""
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
    out += process_samples()
    if scrape is not None:
        out += scrape.samples()
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
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create_beside(path: Path) -> tuple[int, str]:
    """A new file beside `path` for writing, created exclusively 0600 under a random
    name (what tempfile.mkstemp does, without importing tempfile and random into the
    agent for it: issue 16)."""
    while True:
        tmp = str(path.parent / f".metrics-{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           0o600), tmp
        except FileExistsError:
            continue


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
