"""Pod metrics scraped on the device (issue 17): the strict parser, a real HTTP scrape,
the bounds and what they drop, the targets, and the offline drop order in a real LMDB."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgecore import metrics
from edgecore.cache import Cache, OutboxKind
from edgecore.scrape import ParseError, ScrapeLimits, Scraper, Target, cut, parse, targets
from edgecore.sync import Reporter
from shared.codec import Report, decode
from shared.delta import EdgeDesired
from shared.entries import parse_metrics_batch

GOOD = """\
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="get",code="200"} 1027 1395066363000
http_requests_total{method="post", code="400",} 3
# a comment
temp_celsius{room="a \\"quoted\\" \\\\ b\\nc"} -3.5e1
nan_gauge NaN
up_inf +Inf
# TYPE lat histogram
lat_bucket{le="0.5"} 1
lat_bucket{le="+Inf"} 2
lat_sum 0.7
lat_count 2
"""


def test_parse_reads_the_text_format() -> None:
    p = parse(GOOD, max_series=100)
    assert p.types == {"http_requests_total": "counter", "lat": "histogram"}
    assert p.dropped == 0
    by = {(n, tuple(sorted(lb.items()))): v for n, lb, v in p.samples}
    assert by[("http_requests_total", (("code", "200"), ("method", "get")))] == 1027
    assert by[("http_requests_total", (("code", "400"), ("method", "post")))] == 3
    assert by[("temp_celsius", (("room", 'a "quoted" \\ b\nc'),))] == -35.0
    assert math.isnan(by[("nan_gauge", ())])
    assert by[("up_inf", ())] == math.inf
    assert by[("lat_bucket", (("le", "+Inf"),))] == 2
    assert len(p.samples) == 9


def test_parse_stops_at_openmetrics_eof_and_keeps_the_first_series() -> None:
    p = parse("a 1\nb 2\nc 3\nd 4\n# EOF\ngarbage here{\n", max_series=2)
    assert [s[0] for s in p.samples] == ["a", "b"]
    assert p.dropped == 2


@pytest.mark.parametrize("body", [
    "<html><body>not metrics</body></html>",
    "metric",                       # no value
    "metric one",                   # not a number
    "metric 1_000",                 # Python would read it; the format does not
    "metric 1 2 3",                 # too many fields
    "metric 1 12.5",                # timestamp not an integer
    "9metric 1",                    # name starts with a digit
    'metric{a="1" 1',               # labels not closed
    'metric{a=1} 1',                # label value not quoted
    'metric{a="x\\q"} 1',           # bad escape
    'metric{a="1",a="2"} 1',        # label twice
    'metric{1a="1"} 1',             # bad label name
    "metric{} 1\nmetric{} 2",       # duplicate series
    "# TYPE metric bogus",          # unknown type
    "# TYPE metric counter\n# TYPE metric gauge",
    "metric{a=\"1\"}1",             # no space before the value
])
def test_parse_refuses_garbled_input(body: str) -> None:
    with pytest.raises(ParseError, match="line"):
        parse(body, max_series=100)


def test_cut_keeps_whole_lines() -> None:
    assert cut(b"a 1\nb 2\nc 3\n", 100) == (b"a 1\nb 2\nc 3\n", False)
    assert cut(b"a 1\nb 2\nc 3\n", 9) == (b"a 1\nb 2\n", True)
    assert cut(b"abcdefgh", 4) == (b"", True)


# -- a real HTTP scrape ----------------------------------------------------------------


class Server:
    """A tiny HTTP/1.0 server on 127.0.0.1 serving `bodies[path]` (status 200)."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.port = 0
        self._server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        await reader.readuntil(b"\r\n\r\n")
        path = line.split()[1].decode()
        body = self.bodies.get(path)
        if body is None:
            writer.write(b"HTTP/1.0 404 Not Found\r\n\r\n")
        else:
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server() as s:
        yield s


def scraper(found: list[Target], sent: list[dict[str, Any]], **limits: Any) -> Scraper:
    async def sink(batch: dict[str, Any]) -> None:
        sent.append(batch)

    return Scraper(targets=lambda: found, sink=sink, interval_s=60,
                   agent=lambda: [("edgecore_messages_received_total", {}, 5.0)],
                   clock=lambda: 1000.0, limits=ScrapeLimits(timeout_s=5, **limits))


async def test_scrape_garbled_oversized_and_missing_pods(server: Server) -> None:
    server.bodies["/metrics"] = GOOD.encode()
    server.bodies["/garbled"] = b"<html>oops</html>\n"
    server.bodies["/big"] = b"".join(b"big_series{i=\"%d\"} %d\n" % (i, i) for i in range(200))
    found = [Target("pod/ns/good", "127.0.0.1", server.port, "/metrics"),
             Target("pod/ns/garbled", "127.0.0.1", server.port, "/garbled"),
             Target("pod/ns/big", "127.0.0.1", server.port, "/big"),
             Target("pod/ns/missing", "127.0.0.1", server.port, "/nothing-here")]
    sent: list[dict[str, Any]] = []
    s = scraper(found, sent, max_body_bytes=1000)
    batch = await s.round()
    assert sent == [batch]
    parsed = parse_metrics_batch(batch)  # what the cloud will read: valid
    assert parsed.ts == 1000.0 and parsed.interval == 60
    assert set(parsed.pods) == {"pod/ns/good", "pod/ns/big"}
    assert len(parsed.pods["pod/ns/good"].samples) == 9
    assert parsed.pods["pod/ns/good"].types["lat"] == "histogram"
    big = parsed.pods["pod/ns/big"].samples
    assert 0 < len(big) < 200 and big[-1][0] == "big_series"  # cut at a whole line
    assert s.stats.truncated == 1
    assert s.stats.failures["parse"] == 1 and s.stats.failures["http"] == 1
    assert s.stats.up == {"pod/ns/good": True, "pod/ns/garbled": False, "pod/ns/big": True,
                          "pod/ns/missing": False}
    agent = {(n, tuple(sorted(lb.items()))): v for n, lb, v in parsed.agent.samples}
    assert agent[("edgecore_messages_received_total", ())] == 5.0
    assert agent[("edgecore_scrape_failures_total", (("reason", "parse"),))] == 1.0
    assert agent[("edgecore_scrape_truncated_total", ())] == 1.0
    assert agent[("edgecore_pod_scrape_up", (("namespace", "ns"), ("pod", "garbled")))] == 0.0
    assert parsed.agent.types["edgecore_scrape_failures_total"] == "counter"


async def test_connect_refused_and_timeout_are_counted(server: Server) -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()  # never answers while the scrape waits
        writer.close()

    slow = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = slow.sockets[0].getsockname()[1]
        found = [Target("pod/ns/slow", "127.0.0.1", port, "/metrics"),
                 Target("pod/ns/closed", "127.0.0.1", 1, "/metrics")]
        sent: list[dict[str, Any]] = []
        s = scraper(found, sent)
        s.limits = ScrapeLimits(timeout_s=0.3)
        await s.round()
        assert s.stats.failures["timeout"] == 1 and s.stats.failures["connect"] == 1
        assert parse_metrics_batch(sent[0]).pods == {}
    finally:
        done.set()
        slow.close()
        await slow.wait_closed()


async def test_bounds_per_pod_per_node_and_batch_bytes(server: Server) -> None:
    for name in ("a", "b", "c"):
        server.bodies[f"/{name}"] = b"".join(
            b"s_%s{i=\"%d\"} 1\n" % (name.encode(), i) for i in range(50))
    found = [Target(f"pod/ns/{n}", "127.0.0.1", server.port, f"/{n}") for n in "abc"]
    sent: list[dict[str, Any]] = []
    s = scraper(found, sent, max_series_per_pod=30, max_series_per_node=70)
    parsed = parse_metrics_batch(await s.round())
    counts = {k: len(v.samples) for k, v in parsed.pods.items()}
    # 30 a pod at most; the node's 70 fill a and b, then 10 of c, in pod key order
    assert counts == {"pod/ns/a": 30, "pod/ns/b": 30, "pod/ns/c": 10}
    assert s.stats.dropped["pod_limit"] == 3 * 20
    assert s.stats.dropped["node_limit"] == 20
    # the batch byte bound: the agent's series always go, pods fill what is left
    s = scraper(found, sent, max_batch_bytes=4096)
    batch = await s.round()
    parsed = parse_metrics_batch(batch)
    kept = sum(len(v.samples) for v in parsed.pods.values())
    assert 0 < kept < 150
    assert s.stats.dropped["batch_bytes"] == 150 - kept
    assert len(Report(node="n", seq=1, telemetry=[batch]).as_dict()["telemetry"]) == 1
    import msgpack
    assert len(msgpack.packb(batch)) <= 4096


def test_targets_from_the_desired_set() -> None:
    def pod(ann: dict[str, str] | None, *, host: bool = False,
            ports: list[int] | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"containers": [
            {"name": "c", "image": "i", "ports": [{"containerPort": p} for p in ports or []]}]}
        if host:
            spec["hostNetwork"] = True
        out: dict[str, Any] = {"spec": spec}
        if ann is not None:
            out["annotations"] = ann
        return out

    items = {
        "pod/ns/plain": pod(None),
        "pod/ns/off": pod({"prometheus.io/scrape": "false", "prometheus.io/port": "9"}),
        "pod/ns/on": pod({"prometheus.io/scrape": "true", "prometheus.io/port": "9100",
                          "prometheus.io/path": "/stats"}),
        "pod/ns/host": pod({"prometheus.io/scrape": "true", "prometheus.io/port": "9"},
                           host=True),
        "pod/ns/default-port": pod({"prometheus.io/scrape": "true"}, ports=[8080]),
        "pod/ns/no-port": pod({"prometheus.io/scrape": "true"}),
        "pod/ns/bad-port": pod({"prometheus.io/scrape": "true", "prometheus.io/port": "x"}),
        "pod/ns/not-attached": pod({"prometheus.io/scrape": "true",
                                    "prometheus.io/port": "9"}),
        "configmap/ns/c": {"data": {}},
    }
    ips = {"pod/ns/on": "10.88.0.5", "pod/ns/default-port": "10.88.0.6"}
    assert targets(items, ips.get) == [
        Target("pod/ns/default-port", "10.88.0.6", 8080, "/metrics"),
        Target("pod/ns/host", "127.0.0.1", 9, "/metrics"),
        Target("pod/ns/on", "10.88.0.5", 9100, "/stats"),
    ]


def test_agent_metrics_carry_its_rss_and_the_scraper() -> None:
    from edgecore.link import LinkStats
    from edgecore.scrape import ScrapeStats
    from edgecore.sync import SyncStats

    stats = ScrapeStats(scrapes=3, up={"pod/ns/p": True})
    names = {n: v for n, lb, v in metrics.samples(LinkStats(), SyncStats(), stats) if not lb}
    assert names["edgecore_process_resident_memory_bytes"] > 1 << 20
    assert names["edgecore_scrapes_total"] == 3
    text = metrics.render("n1", metrics.samples(LinkStats(), SyncStats(), stats))
    assert '# TYPE edgecore_pod_scrape_up gauge' in text
    assert 'edgecore_pod_scrape_up{node="n1",namespace="ns",pod="p"} 1' in text


# -- offline: the outbox keeps one metrics batch, and drops it first ------------------


def _kinds(cache: Cache) -> list[str]:
    out = []
    for _, raw in cache.outbox():
        msg = decode(raw)
        assert isinstance(msg, Report)
        if msg.pods or msg.node_status:
            out.append("status")
        elif msg.telemetry and "metrics" in msg.telemetry[0]:
            out.append("metrics")
        else:
            out.append("telemetry")
    return out


def _batch(n: int) -> dict[str, Any]:
    return {"ts": 1000, "metrics": {"iv": 60, "agent": {"t": {}, "s": [
        [f"m_{i}", {"pad": "x" * 40}, 1.0] for i in range(n)]}, "pods": {}}}


async def test_offline_metrics_never_crowd_out_status(tmp_path: Path) -> None:
    with Cache(tmp_path / "c", outbox_budget=16 * 1024) as cache:
        r = Reporter(node="n1", cache=cache, desired=lambda: EdgeDesired(epoch="E", gen=1),
                     node_status=lambda: {"arch": "amd64"}, batch_s=0, clock=lambda: 5.0)
        await r.flush()  # status (node status)
        await r.telemetry({"ts": 0, "node": {"cpu": 1, "mem": 2}})
        first = await r.metrics(_batch(40))
        second = await r.metrics(_batch(40))
        # the second batch replaced the unsent first one: one batch waits, never more
        assert _kinds(cache) == ["status", "telemetry", "metrics"]
        assert [seq for seq, _ in cache.outbox()][-1] == second and first != second
        from shared.pods import PodStatus
        gone: dict[str, int] = {}
        for i in range(200):  # status reports until the budget takes telemetry
            r.update(f"pod/ns/p{i}", PodStatus(phase="Running", message="m" * 100))
            await r.flush()
            kinds = _kinds(cache)
            if "metrics" not in kinds and "metrics" not in gone:
                gone["metrics"] = i
                # the batch went first, though newer than the telemetry point; every
                # status report is still there
                assert kinds.count("telemetry") == 1
                assert kinds.count("status") == i + 2
            if "telemetry" not in kinds:
                gone["telemetry"] = i
                break
        assert gone["metrics"] < gone["telemetry"]
        await r.metrics(_batch(5))  # a new batch while over budget: it is the newest, kept
        assert _kinds(cache)[-1] == "metrics"
        assert cache.outbox_bytes == sum(len(raw) + 1 for _, raw in cache.outbox())


async def test_metrics_batch_dropped_first_under_budget(tmp_path: Path) -> None:
    with Cache(tmp_path / "c", outbox_budget=8 * 1024) as cache:
        def report(seq: int) -> bytes:
            from shared.codec import encode
            return encode(Report(node="n1", seq=seq, pods={"pod/a/b": {"m": "x" * 2500}}))

        cache.append_report(report, kind=OutboxKind.STATUS)
        cache.append_report(lambda seq: b"t" * 1000, kind=OutboxKind.TELEMETRY)
        m = cache.append_report(lambda seq: b"m" * 3000, kind=OutboxKind.TELEMETRY,
                                metrics=True).seq
        res = cache.append_report(report, kind=OutboxKind.STATUS)  # over 8 KiB now
        seqs = [seq for seq, _ in cache.outbox()]
        assert m not in seqs  # the metrics batch went, though it was newer than telemetry
        assert res.dropped_telemetry == 1 and res.dropped_status == 0
        assert len(seqs) == 3


async def test_batch_bytes_bound_counts_utf8_bytes(server: Server) -> None:
    server.bodies["/u"] = "".join(
        f's_u{{i="{i}",v="{"ü" * 200}"}} 1\n' for i in range(50)).encode()
    sent: list[dict[str, Any]] = []
    s = scraper([Target("pod/ns/u", "127.0.0.1", server.port, "/u")], sent,
                max_batch_bytes=8192)
    batch = await s.round()
    import msgpack
    kept = len(parse_metrics_batch(batch).pods["pod/ns/u"].samples)
    assert 0 < kept < 50 and s.stats.dropped["batch_bytes"] == 50 - kept
    assert len(msgpack.packb(batch)) <= 8192


async def test_a_failing_round_does_not_stop_the_scraper() -> None:
    calls: list[int] = []
    sent: list[dict[str, Any]] = []

    def found() -> list[Target]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a desired entry of a shape nobody expected")
        return []

    async def sink(batch: dict[str, Any]) -> None:
        sent.append(batch)

    s = Scraper(targets=found, sink=sink, agent=list, interval_s=0.05, always=True)
    task = asyncio.create_task(s.run())
    try:
        async with asyncio.timeout(5):
            while not sent:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(calls) >= 2 and parse_metrics_batch(sent[0]).pods == {}


async def test_a_round_with_no_pod_to_scrape_sends_nothing_unless_asked() -> None:
    """Issue 16's quiet link: the agent's own metrics alone (about 2 KB) are not sent every
    minute by a node with nothing to scrape; `agent_metrics` (`always`) sends them."""
    quiet: list[dict[str, Any]] = []
    assert await scraper([], quiet).round() is None
    assert quiet == []
    asked: list[dict[str, Any]] = []
    s = scraper([], asked)
    s.always = True
    batch = await s.round()
    assert asked == [batch]
    assert "edgecore_messages_received_total" in {
        n for n, _, _ in parse_metrics_batch(batch).agent.samples}
