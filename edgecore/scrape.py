"""Prometheus metrics of annotated pods, scraped on the device and sent up in batches.

Why on the device: a Prometheus in the cloud cannot reach a pod behind a device's NAT,
and a device should open no port. So the agent does what Prometheus' kubernetes_sd
would do, locally: every `interval_s` (default 60 s) it scrapes each pod of its
desired set annotated the usual way,

    prometheus.io/scrape: "true"
    prometheus.io/port: "9100"        (default: the pod's first containerPort)
    prometheus.io/path: "/metrics"    (the default)

over the pod network (the pod's address on the node's bridge; 127.0.0.1 for a
hostNetwork pod), parses the Prometheus text format (0.0.4) with the small strict
parser below (prometheus_client's parser would cost the agent its import, a few MiB
of a ~30 MiB budget), and hands one batch (`shared.entries.metrics_batch`: the
agent's own metrics and every pod's samples) to the sink, the reporter, which puts it
in the outbox as a report the cloud keeps only the latest of (it replaces an unsent
previous batch and is the first thing dropped when the outbox is over budget).

Bounds, and what is dropped (each counted in `ScrapeStats`, which the agent's own
metrics carry: `edgecore_scrape_*`):
- a response body over `max_body_bytes` is cut at its last full line within the
  limit (`edgecore_scrape_truncated_total`) and the rest is parsed as usual;
- a body that does not parse (a garbled line, an invalid name, a bad value, a
  duplicate series) is refused whole, as Prometheus refuses it: the pod contributes
  no samples that round (`edgecore_scrape_failures_total{reason="parse"}`);
- per pod, series past `max_series_per_pod` (in the pod's exposition order) are
  dropped (`edgecore_scrape_series_dropped_total{reason="pod_limit"}`);
- per node, the agent's own series always go; pods then fill the batch in pod key
  order until `max_series_per_node` series or `max_batch_bytes` (estimated encoded
  size) are reached; what does not fit is dropped (`reason="node_limit"` or
  `"batch_bytes"`).
Per pod, `edgecore_pod_scrape_up{namespace,pod}` is 1 when the last scrape worked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgecore.ratelimit import RateLimitedLog
from shared.entries import (
    MAX_LABEL_VALUE,
    MAX_LABELS,
    METRIC_TYPES,
    POD,
    SCRAPE_ANNOTATION_PREFIX,
    SeriesSet,
    metrics_batch,
    split_key,
    valid_label_name,
    valid_metric_name,
)

log = logging.getLogger(__name__)

Sample = tuple[str, dict[str, str], float]

ANN_SCRAPE = SCRAPE_ANNOTATION_PREFIX + "scrape"
ANN_PORT = SCRAPE_ANNOTATION_PREFIX + "port"
ANN_PATH = SCRAPE_ANNOTATION_PREFIX + "path"
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class ScrapeLimits:
    """How much the scraper takes in (see the module docstring for what is dropped)."""

    max_body_bytes: int = 256 * 1024
    """Bytes read of one pod's response; the rest is cut at a line boundary."""
    max_series_per_pod: int = 500
    max_series_per_node: int = 2000
    """Series of all pods in one batch (the agent's own come on top)."""
    max_batch_bytes: int = 256 * 1024
    """Estimated encoded size of one batch (the wire takes 1 MiB per report)."""
    timeout_s: float = 10.0
    """Seconds one pod's scrape may take, connect to last byte."""
    concurrency: int = 4
    """Pods scraped at the same time."""


class ParseError(ValueError):
    """The body is not the Prometheus text format; the message names the line."""


@dataclass
class Parsed:
    types: dict[str, str]
    samples: list[Sample]
    dropped: int = 0  # series past the per-pod limit


# -- the parser -------------------------------------------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|Inf|inf)"
                     r"|NaN|nan")
_TIMESTAMP = re.compile(r"-?[0-9]+")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def parse(text: str, *, max_series: int) -> Parsed:
    """The samples of a Prometheus text-format body (0.0.4; an OpenMetrics `# EOF` ends
    it), keeping the first `max_series` series and counting the others in `dropped`.

    Strict: a line that is not a comment, a HELP/TYPE line or a well-formed sample, an
    invalid metric or label name, a value that is not a number, too many labels, a
    label value too long, or a series seen twice raises ParseError naming the line.
    Timestamps are accepted and ignored (the batch carries the scrape time)."""
    types: dict[str, str] = {}
    samples: list[Sample] = []
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    dropped = 0
    for n, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.strip() == "# EOF":
                break
            _comment(line, n, types)
            continue
        if len(samples) >= max_series:
            dropped += 1  # not parsed: nothing of it is kept
            continue
        name, labels, value = _sample(line, n)
        ident = (name, tuple(sorted(labels.items())))
        if ident in seen:
            raise ParseError(f"line {n}: duplicate series {name}{_show(labels)}")
        seen.add(ident)
        samples.append((name, labels, value))
    return Parsed(types=types, samples=samples, dropped=dropped)


def _show(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""


def _comment(line: str, n: int, types: dict[str, str]) -> None:
    parts = line[1:].strip().split(None, 3)
    if not parts or parts[0] not in ("HELP", "TYPE"):
        return  # any other comment
    if len(parts) < 2 or not valid_metric_name(parts[1]):
        raise ParseError(f"line {n}: {parts[0]} without a valid metric name")
    if parts[0] == "TYPE":
        kind = parts[2] if len(parts) > 2 else ""
        if len(parts) != 3 or kind not in METRIC_TYPES:
            raise ParseError(f"line {n}: TYPE of {parts[1]} must be one of "
                             f"{', '.join(sorted(METRIC_TYPES))}")
        if parts[1] in types:
            raise ParseError(f"line {n}: second TYPE line for {parts[1]}")
        types[parts[1]] = kind


def _sample(line: str, n: int) -> Sample:
    m = _NAME.match(line)
    if m is None or not valid_metric_name(m.group()):
        raise ParseError(f"line {n}: does not start with a metric name")
    name, i = m.group(), m.end()
    labels: dict[str, str] = {}
    if i < len(line) and line[i] == "{":
        labels, i = _labels(line, i + 1, n)
    rest = line[i:]
    if not rest[:1].isspace():
        raise ParseError(f"line {n}: expected a space and a value after {name}")
    fields = rest.split()
    if not fields or len(fields) > 2:
        raise ParseError(f"line {n}: expected a value and an optional timestamp")
    if _NUMBER.fullmatch(fields[0]) is None:
        raise ParseError(f"line {n}: {fields[0][:40]!r} is not a number")
    if len(fields) == 2 and _TIMESTAMP.fullmatch(fields[1]) is None:
        raise ParseError(f"line {n}: {fields[1][:40]!r} is not a timestamp")
    return name, labels, float(fields[0])


def _labels(line: str, i: int, n: int) -> tuple[dict[str, str], int]:
    """Labels from just after `{` to just after `}`."""
    labels: dict[str, str] = {}
    while True:
        while i < len(line) and line[i] in " \t":
            i += 1
        if i < len(line) and line[i] == "}":
            return labels, i + 1
        m = _LABEL.match(line, i)
        if m is None or not valid_label_name(m.group()):
            raise ParseError(f"line {n}: expected a label name at column {i + 1}")
        label, i = m.group(), m.end()
        while i < len(line) and line[i] in " \t":
            i += 1
        if line[i:i + 2] != '="':
            raise ParseError(f'line {n}: expected ="value" after label {label}')
        i += 2
        chars: list[str] = []
        while True:
            if i >= len(line):
                raise ParseError(f"line {n}: label {label} has no closing quote")
            c = line[i]
            if c == '"':
                i += 1
                break
            if c == "\\":
                esc = _ESCAPES.get(line[i + 1:i + 2])
                if esc is None:
                    raise ParseError(f"line {n}: bad escape in label {label}")
                chars.append(esc)
                i += 2
                continue
            chars.append(c)
            i += 1
        if label in labels:
            raise ParseError(f"line {n}: label {label} given twice")
        value = "".join(chars)
        if len(value) > MAX_LABEL_VALUE:
            raise ParseError(f"line {n}: label {label} is longer than {MAX_LABEL_VALUE}")
        labels[label] = value
        if len(labels) > MAX_LABELS:
            raise ParseError(f"line {n}: more than {MAX_LABELS} labels")
        while i < len(line) and line[i] in " \t":
            i += 1
        if i < len(line) and line[i] == ",":
            i += 1
        elif i < len(line) and line[i] == "}":
            continue
        else:
            raise ParseError(f"line {n}: expected , or }} after label {label}")


def cut(body: bytes, limit: int) -> tuple[bytes, bool]:
    """`body` within `limit` bytes, cut after its last full line (True: it was cut)."""
    if len(body) <= limit:
        return body, False
    head = body[:limit]
    return head[: head.rfind(b"\n") + 1], True


# -- fetching ---------------------------------------------------------------------------


class ScrapeError(Exception):
    """One pod's scrape failed; `reason` is the counter label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def http_get(host: str, port: int, path: str, *, max_bytes: int,
                   timeout_s: float) -> tuple[bytes, bool]:
    """GET http://host:port/path (HTTP/1.0: no chunking), the body up to `max_bytes`
    cut at a line boundary (True: it was cut). Raises ScrapeError."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEADER_BYTES)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n"
                             "Accept: text/plain;version=0.0.4\r\n"
                             "User-Agent: edgecore-scrape\r\n\r\n".encode())
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b"\r\n", 1)[0].split()
                if len(status) < 2 or status[1] != b"200":
                    shown = b" ".join(status[1:]).decode("latin-1")[:60] or "missing"
                    raise ScrapeError("http", f"HTTP status {shown}")
                if b"transfer-encoding: chunked" in head.lower():
                    raise ScrapeError("http", "chunked response to an HTTP/1.0 request")
                body = await reader.read(max_bytes + 1)
                while len(body) <= max_bytes:
                    more = await reader.read(max_bytes + 1 - len(body))
                    if not more:
                        break
                    body += more
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        raise ScrapeError("timeout", f"no answer within {timeout_s:g}s") from None
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise ScrapeError("http", "no complete HTTP header") from None
    except OSError as exc:
        raise ScrapeError("connect", str(exc) or type(exc).__name__) from None
    return cut(body, max_bytes)


# -- targets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    key: str  # pod key, pod/ns/name
    host: str
    port: int
    path: str


def targets(items: Mapping[str, Any], address: Callable[[str], str | None]) -> list[Target]:
    """The pods of a desired set that ask to be scraped, where they can be reached:
    `address(key)` is the pod's IP (None: not attached yet; skipped), 127.0.0.1 for a
    hostNetwork pod. A pod with a bad port annotation is skipped (and logged)."""
    out: list[Target] = []
    for key, value in items.items():
        if not key.startswith(POD + "/") or not isinstance(value, dict):
            continue
        ann = value.get("annotations") or {}
        if not isinstance(ann, dict) or str(ann.get(ANN_SCRAPE, "")).lower() != "true":
            continue
        spec = value.get("spec") if isinstance(value.get("spec"), dict) else {}
        port = _port(ann.get(ANN_PORT), spec)
        if port is None:
            log.debug("%s: no valid %s and no containerPort: not scraped", key, ANN_PORT)
            continue
        path = str(ann.get(ANN_PATH) or "/metrics")
        if not path.startswith("/") or any(c.isspace() for c in path):
            continue
        host = "127.0.0.1" if spec.get("hostNetwork") else address(key)
        if host:
            out.append(Target(key=key, host=host, port=port, path=path))
    return sorted(out, key=lambda t: t.key)


def _port(raw: Any, spec: Mapping[str, Any]) -> int | None:
    if raw is not None:
        try:
            port = int(str(raw))
        except ValueError:
            return None
        return port if 0 < port < 65536 else None
    for c in spec.get("containers") or []:
        for p in (c.get("ports") or []) if isinstance(c, dict) else []:
            if isinstance(p, dict) and isinstance(p.get("containerPort"), int):
                return int(p["containerPort"])
    return None


# -- the scraper ------------------------------------------------------------------------


@dataclass
class ScrapeStats:
    """What the scraper did and dropped (counters since start)."""

    scrapes: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # by reason
    truncated: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # series, by reason
    batches: int = 0
    batch_bytes: int = 0  # estimated size of the last batch
    up: dict[str, bool] = field(default_factory=dict)  # pod key -> last scrape worked

    def samples(self) -> list[Sample]:
        out: list[Sample] = [("edgecore_scrapes_total", {}, float(self.scrapes))]
        out += [("edgecore_scrape_failures_total", {"reason": r}, float(self.failures[r]))
                for r in ("connect", "timeout", "http", "parse")]
        out.append(("edgecore_scrape_truncated_total", {}, float(self.truncated)))
        out += [("edgecore_scrape_series_dropped_total", {"reason": r},
                 float(self.dropped[r])) for r in ("pod_limit", "node_limit", "batch_bytes")]
        out.append(("edgecore_scrape_batches_total", {}, float(self.batches)))
        out.append(("edgecore_scrape_batch_bytes", {}, float(self.batch_bytes)))
        for key, ok in sorted(self.up.items()):
            _, ns, name = split_key(key)
            out.append(("edgecore_pod_scrape_up", {"namespace": ns, "pod": name},
                        1.0 if ok else 0.0))
        return out


def estimate(sample: Sample) -> int:
    """The msgpack size of one sample in a batch, or a little more (UTF-8 bytes of the
    label values; the widest headers the limits on names and labels allow)."""
    name, labels, _ = sample
    return len(name) + 16 + sum(len(k) + len(v.encode()) + 4 for k, v in labels.items())


class Scraper:
    """Scrapes the annotated pods every `interval_s` and hands one batch to `sink`.

    A round that finds no pod to scrape sends nothing unless `always` (the agent's
    `agent_metrics` setting): the agent's own metrics alone are about 2 KB a round,
    300 bit/s at the default 60 s, five times the rest of an idle node's link (issue 16)."""

    def __init__(self, *, targets: Callable[[], list[Target]],
                 sink: Callable[[dict[str, Any]], Awaitable[object]],
                 agent: Callable[[], Iterable[Sample]], interval_s: float = 60.0,
                 limits: ScrapeLimits | None = None, clock: Callable[[], float] = time.time,
                 fetch: Callable[..., Awaitable[tuple[bytes, bool]]] = http_get,
                 always: bool = False) -> None:
        self.targets = targets
        self.sink = sink
        self.agent = agent
        self.interval_s = interval_s
        self.always = always
        self.limits = limits or ScrapeLimits()
        self.clock = clock
        self.fetch = fetch
        self.stats = ScrapeStats()
        self._rlog = RateLimitedLog(log)

    async def run(self) -> None:
        """One round every `interval_s` (aligned to the clock) until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s - (self.clock() % self.interval_s))
            try:
                await self.round()
            except Exception as exc:  # pods' metrics are never worth the agent
                self._rlog.warning("round", "scrape round failed: %s: %s",
                                   type(exc).__name__, exc)

    async def round(self) -> dict[str, Any] | None:
        """Scrape every target, build the batch, give it to the sink; returns it (None:
        no pod to scrape and not `always`, nothing sent)."""
        ts = float(int(self.clock()))
        found = self.targets()
        if not found and not self.always:
            self.stats.up = {}
            return None
        gate = asyncio.Semaphore(max(1, self.limits.concurrency))

        async def one(t: Target) -> tuple[str, Parsed | None]:
            async with gate:
                return t.key, await self._scrape(t)

        results = await asyncio.gather(*(one(t) for t in found))
        self.stats.up = {k: p is not None for k, p in results}
        batch = self._batch(ts, {k: p for k, p in results if p is not None})
        self.stats.batches += 1
        await self.sink(batch)
        return batch

    async def _scrape(self, t: Target) -> Parsed | None:
        lim = self.limits
        self.stats.scrapes += 1
        try:
            body, was_cut = await self.fetch(t.host, t.port, t.path,
                                             max_bytes=lim.max_body_bytes,
                                             timeout_s=lim.timeout_s)
            if was_cut:
                self.stats.truncated += 1
                self._rlog.warning(f"cut:{t.key}", "%s: metrics over %d bytes, cut",
                                   t.key, lim.max_body_bytes)
            try:
                parsed = parse(body.decode("utf-8"), max_series=lim.max_series_per_pod)
            except UnicodeDecodeError as exc:
                raise ParseError(f"not UTF-8 at byte {exc.start}") from None
        except ScrapeError as exc:
            self.stats.failures[exc.reason] += 1
            self._rlog.warning(f"fail:{t.key}", "%s: scrape of %s:%d%s failed: %s", t.key,
                               t.host, t.port, t.path, exc)
            return None
        except ParseError as exc:
            self.stats.failures["parse"] += 1
            self._rlog.warning(f"parse:{t.key}", "%s: metrics refused, not the Prometheus "
                               "text format: %s", t.key, exc)
            return None
        if parsed.dropped:
            self.stats.dropped["pod_limit"] += parsed.dropped
        return parsed

    def _batch(self, ts: float, parsed: Mapping[str, Parsed]) -> dict[str, Any]:
        lim = self.limits
        own = list(self.agent()) + self.stats.samples()
        own_types = _agent_types(own)
        size = sum(estimate(s) for s in own) + sum(len(f) + 10 for f in own_types) + 64
        left = lim.max_series_per_node
        pods: dict[str, SeriesSet] = {}
        for key in sorted(parsed):
            p = parsed[key]
            kept: list[Sample] = []
            for i, s in enumerate(p.samples):
                if left <= 0:
                    self.stats.dropped["node_limit"] += len(p.samples) - i
                    break
                n = estimate(s)
                if size + n > lim.max_batch_bytes:
                    self.stats.dropped["batch_bytes"] += len(p.samples) - i
                    left = 0
                    break
                kept.append(s)
                size += n
                left -= 1
            if kept:
                families = {s[0] for s in kept} | {s[0].rsplit("_", 1)[0] for s in kept}
                types = {f: t for f, t in p.types.items() if f in families}
                size += sum(len(f) + 10 for f in types) + len(key) + 8
                pods[key] = SeriesSet(types=types, samples=kept)
        self.stats.batch_bytes = size
        return metrics_batch(ts, interval=self.interval_s,
                             agent=SeriesSet(types=own_types, samples=own), pods=pods)


def _agent_types(samples: Iterable[Sample]) -> dict[str, str]:
    return {name: "counter" if name.endswith("_total") else "gauge" for name, _, _ in samples}
