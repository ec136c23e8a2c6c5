"""Turning API objects into what the user reads: tables, describe text, JSON, YAML.

Tables are rich tables without borders, laid out like kubectl's so they stay easy
to `grep` and `awk`. Rich decides on color: on a terminal there is color, in a
pipe there is none (the Console is built by `fedctl.app` with that in mind).
JSON and YAML are written with plain `write` calls, never through rich, so they
are byte-for-byte parseable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml
from rich.console import Console, RenderableType
from rich.segment import Segment, Segments
from rich.table import Table
from rich.text import Text

from fedctl.kinds import BY_KIND, POD, Kind
from shared.quantity import format_cpu, format_memory

NONE = "<none>"
_TIME_KEYS = {"lastSeen", "startedAt", "finishedAt", "updatedAt", "lastTransition", "lastHeartbeat"}

_READY_STYLE = {"Ready": "green", "NotReady": "red", "Unknown": "yellow"}
_PHASE_STYLE = {
    "Running": "green",
    "Pending": "yellow",
    "Failed": "red",
    "Succeeded": "blue",
    "Unknown": "magenta",
}
_ROLLOUT_STYLE = {
    "Complete": "green",
    "Progressing": "yellow",
    "Paused": "yellow",
    "RolledBack": "red",
    "Aborted": "red",
}


# --- small formatters ---------------------------------------------------------------


def _dig(obj: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(p)
    return default if obj is None else obj


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch from a unix number or an RFC 3339 string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def duration(seconds: float) -> str:
    """kubectl's compact age: 45s, 3m12s, 5h, 3d."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s"
    if s < 3 * 3600:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def age(value: Any, *, now: float | None = None) -> str:
    t = _epoch(value)
    if t is None:
        return "-"
    return duration((time.time() if now is None else now) - t)


def ago(value: Any, *, now: float | None = None) -> str:
    t = _epoch(value)
    return "never" if t is None else f"{age(t, now=now)} ago"


def timestamp(value: Any) -> str:
    t = _epoch(value)
    if t is None:
        return str(value)
    return f"{rfc3339(t)} ({ago(t)})"


def labels_text(labels: Any) -> str:
    if not isinstance(labels, dict) or not labels:
        return NONE
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _styled(value: str, styles: dict[str, str]) -> Text:
    return Text(value, style=styles.get(value, ""))


# --- per-kind columns ----------------------------------------------------------------


def _node_status(node: dict[str, Any]) -> Text:
    ready = str(_dig(node, "status", "ready", default="Unknown"))
    text = _styled(ready, _READY_STYLE)
    if _dig(node, "spec", "unschedulable"):
        text.append(",SchedulingDisabled", style="yellow")
    return text


def _gen(node: dict[str, Any]) -> Text:
    acked = _dig(node, "status", "ackedGen", default=0)
    desired = _dig(node, "status", "desiredGen", default=0)
    return Text(f"{acked}/{desired}", style="yellow" if acked != desired else "")


def _pod_restarts(pod: dict[str, Any]) -> int:
    return sum(
        int(c.get("restartCount") or 0)
        for c in _dig(pod, "status", "containerStatuses", default=[])
    )


def _pod_reason(pod: dict[str, Any]) -> str:
    """The status' reason; `Updating` first while the node still reports an older
    revision than the pod's spec (an offline node keeps running the old one)."""
    reason = _dig(pod, "status", "reason")
    if not reason:
        for c in _dig(pod, "status", "containerStatuses", default=[]):
            if c.get("reason"):
                reason = c["reason"]
                break
    if not pod_up_to_date(pod) and _dig(pod, "status", "revision"):
        return f"Updating ({reason})" if reason else "Updating"
    return str(reason) if reason else "-"


def _pod_ready(pod: dict[str, Any]) -> str:
    statuses = _dig(pod, "status", "containerStatuses", default=[])
    total = len(_dig(pod, "spec", "containers", default=[])) or len(statuses)
    return f"{sum(1 for c in statuses if c.get('ready'))}/{total}"


def _pod_node(pod: dict[str, Any]) -> str:
    return str(_dig(pod, "status", "nodeName") or _dig(pod, "spec", "nodeName") or "<unscheduled>")


def _images(obj: dict[str, Any]) -> str:
    spec = _dig(obj, "spec", "template", "spec") or _dig(obj, "spec") or {}
    return ",".join(str(c.get("image", "?")) for c in spec.get("containers", [])) or "-"


def _node_selector(obj: dict[str, Any]) -> str:
    sel = _dig(obj, "spec", "template", "spec", "nodeSelector")
    return labels_text(sel) if sel else "<all>"


def workload_ready(obj: dict[str, Any]) -> str:
    """`ready/desired` from whichever status fields cloudcore reports, else '-'."""
    status = obj.get("status") or {}
    for ready_key, want_key in (
        ("numberReady", "desiredNumberScheduled"),
        ("readyReplicas", "replicas"),
        ("ready", "desired"),
    ):
        if ready_key in status or want_key in status:
            want = status.get(want_key, _dig(obj, "spec", "replicas", default="?"))
            return f"{status.get(ready_key, 0)}/{want}"
    return "-"


def rollout_phase(obj: dict[str, Any]) -> str:
    """The DaemonSet's rollout phase; cloudcore leaves out the default, Complete.
    '-' when it has no status at all."""
    status = obj.get("status")
    if not isinstance(status, dict):
        return "-"
    return str(_dig(status, "rollout", "phase", default="Complete"))


STATUS_COUNTS = {
    # kind -> (desired, updated, ready, available): Kubernetes' names for each kind
    "DaemonSet": ("desiredNumberScheduled", "updatedNumberScheduled", "numberReady",
                  "numberAvailable"),
    "Deployment": ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"),
}


def status_counts(obj: dict[str, Any]) -> tuple[int, int, int, int]:
    """(desired, updated, ready, available) pods of a DaemonSet or Deployment's status
    (0 for what cloudcore left out)."""
    status = obj.get("status") or {}
    keys = STATUS_COUNTS.get(str(obj.get("kind")), STATUS_COUNTS["DaemonSet"])
    desired, updated, ready, available = (int(status.get(k) or 0) for k in keys)
    return desired, updated, ready, available


def rollout_progress(obj: dict[str, Any]) -> str:
    """What the rollout is doing: cloudcore's message, else one in its words from the
    counts (`3 of 10 pods updated to revision abc, 0 failed`)."""
    status = obj.get("status") or {}
    message = _dig(status, "rollout", "message")
    if message:
        return str(message)
    desired, updated, _, _ = status_counts(obj)
    return (f"{updated} of {desired} pods updated to revision "
            f"{status.get('updateRevision') or '-'}, "
            f"{_dig(status, 'rollout', 'failed', default=0)} failed")


def _rollout_cell(obj: dict[str, Any]) -> Text:
    return _styled(rollout_phase(obj), _ROLLOUT_STYLE)


def _status_count(key: str) -> Callable[[dict[str, Any]], str]:
    """A count of the status (0 when cloudcore left it out), '-' without a status."""

    def cell(obj: dict[str, Any]) -> str:
        status = obj.get("status")
        return str(status.get(key) or 0) if isinstance(status, dict) else "-"

    return cell


Column = tuple[str, Callable[[dict[str, Any]], str | Text]]


def _name(o: dict[str, Any]) -> str:
    return str(_dig(o, "metadata", "name", default="?"))


def _ns(o: dict[str, Any]) -> str:
    return str(_dig(o, "metadata", "namespace", default="default"))


def _last_seen(o: dict[str, Any]) -> str:
    return ago(_dig(o, "status", "lastSeen"))


def _last_seen_at(now: float) -> Callable[[dict[str, Any]], str]:
    """`_last_seen` against one clock reading, with a fast path for unix seconds."""

    def cell(o: dict[str, Any]) -> str:
        v = (o.get("status") or {}).get("lastSeen")
        if type(v) is float or type(v) is int:
            return duration(now - v) + " ago"
        return ago(v, now=now)

    return cell


def _created(o: dict[str, Any]) -> str:
    return age(_dig(o, "metadata", "creationTimestamp"))


def columns(kind: Kind, *, wide: bool, all_namespaces: bool, mixed: bool = False) -> list[Column]:
    """The table columns for a kind; `mixed` adds KIND for the workloads view."""
    cols: list[Column] = []
    if all_namespaces and kind.namespaced:
        cols.append(("NAMESPACE", _ns))
    if mixed:
        cols.append(("KIND", lambda o: str(o.get("kind", "?"))))
    cols.append(("NAME", _name))
    if kind.kind == "Node":
        cols += [
            ("STATUS", _node_status),
            ("LAST SEEN", _last_seen),
            ("GEN", _gen),
        ]
        if wide:
            cols += [
                ("ARCH", lambda o: str(_dig(o, "status", "arch", default="-"))),
                ("OS", lambda o: str(_dig(o, "status", "os", default="-"))),
                ("AGENT", lambda o: str(_dig(o, "status", "agentVersion", default="-"))),
                ("CPU", lambda o: _quantity(_dig(o, "status", "allocatable", "cpu"), "cpu")),
                (
                    "MEMORY",
                    lambda o: _quantity(_dig(o, "status", "allocatable", "memory"), "memory"),
                ),
                ("REASON", lambda o: str(_dig(o, "status", "reason", default="-"))),
                ("LABELS", lambda o: labels_text(_dig(o, "metadata", "labels"))),
            ]
    elif kind.kind == "Pod":
        cols += [
            ("NODE", _pod_node),
            (
                "PHASE",
                lambda o: _styled(str(_dig(o, "status", "phase", default="Pending")), _PHASE_STYLE),
            ),
            ("RESTARTS", lambda o: str(_pod_restarts(o))),
            ("REASON", _pod_reason),
        ]
        if wide:
            cols += [
                ("READY", _pod_ready),
                ("IP", lambda o: str(_dig(o, "status", "podIP", default="-"))),
                ("REVISION", lambda o: str(_dig(o, "status", "revision", default="-"))),
                ("IMAGES", _images),
                ("MESSAGE", lambda o: str(_dig(o, "status", "message", default="-"))),
            ]
    elif kind.kind in ("DaemonSet", "Deployment"):
        cols.append(("READY", workload_ready))
        if kind.kind == "Deployment" and not mixed:
            cols.append(("REPLICAS", lambda o: str(_dig(o, "spec", "replicas", default=1))))
        # the rollout's columns (each kind's own status names); the workloads view
        # (`mixed`) keeps it short
        rollouts = not mixed
        if rollouts:
            _, updated, _, available = STATUS_COUNTS[kind.kind]
            cols += [
                ("UP-TO-DATE", _status_count(updated)),
                ("AVAILABLE", _status_count(available)),
                ("ROLLOUT", _rollout_cell),
            ]
        cols += [("NODE SELECTOR", _node_selector), ("AGE", _created)]
        if wide or mixed:
            cols.append(("IMAGES", _images))
        if wide and rollouts:
            cols.append(
                ("MESSAGE", lambda o: str(_dig(o, "status", "rollout", "message", default="-")))
            )
    elif kind.kind == "ConfigMap":
        cols += [("DATA", lambda o: str(len(o.get("data") or {}))), ("AGE", _created)]
    elif kind.kind == "AgentUpgrade":
        cols += [
            ("VERSION", lambda o: str(_dig(o, "spec", "version", default="-"))),
            ("PHASE", lambda o: _styled(str(_dig(o, "status", "phase", default="-")),
                                        _UPGRADE_STYLE)),
            ("UPGRADED", _upgrade_count),
            ("IN PROGRESS", lambda o: str(_dig(o, "status", "inProgress", default=0))),
            ("FAILED", lambda o: str(_dig(o, "status", "failed", default=0))),
            ("WAITING", lambda o: str(_dig(o, "status", "waiting", default=0))),
            ("SELECTOR", _upgrade_selector),
            ("AGE", _created),
        ]
        if wide:
            cols += [("IMAGE", lambda o: str(_dig(o, "spec", "image", default="-"))),
                     ("MESSAGE", lambda o: str(_dig(o, "status", "message", default="-")))]
    elif kind.kind == "PriorityClass":
        cols += [("VALUE", lambda o: str(o.get("value", 0))),
                 ("GLOBAL-DEFAULT", lambda o: str(bool(o.get("globalDefault"))).lower()),
                 ("AGE", _created)]
    elif kind.kind == "Namespace":  # edgefed has no namespace phases: each is Active;
        # one in use without a Namespace object of its own has no age
        cols += [("STATUS", lambda o: "Active"),
                 ("LABELS", lambda o: labels_text(_dig(o, "metadata", "labels"))),
                 ("AGE", _created)]
    return cols


_UPGRADE_STYLE = {"Complete": "green", "Progressing": "yellow", "Paused": "yellow",
                  "Aborted": "red"}


def _upgrade_count(o: dict[str, Any]) -> str:
    return (f"{_dig(o, 'status', 'upgraded', default=0)}/"
            f"{_dig(o, 'status', 'total', default=0)}")


def _upgrade_selector(o: dict[str, Any]) -> str:
    labels = _dig(o, "spec", "selector", "matchLabels")
    return labels_text(labels) if labels else "<all nodes>"


def _agent_upgrade(console: Console, obj: dict[str, Any]) -> None:
    """An AgentUpgrade's summary: what, where, how far, and how it goes."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    _field(console, "Version", str(spec.get("version", "-")))
    _field(console, "Image", str(spec.get("image", "-")))
    _field(console, "Selector", _upgrade_selector(obj))
    _field(console, "Phase", _styled(str(status.get("phase") or NONE), _UPGRADE_STYLE))
    _field(console, "Nodes", (
        f"{status.get('upgraded', 0)} upgraded of {status.get('total', 0)}, "
        f"{status.get('inProgress', 0)} in progress, {status.get('failed', 0)} failed, "
        f"{status.get('waiting', 0)} waiting (not Ready)"
        + (f", {status['rolledBack']} rolled back" if status.get("rolledBack") else "")))
    _field(console, "Message", str(status.get("message") or NONE))
    _field(console, "Strategy", (
        f"maxUnavailable {spec.get('maxUnavailable', 1)}, failureThreshold "
        f"{spec.get('failureThreshold', 0)}, healthDeadlineSeconds "
        f"{spec.get('healthDeadlineSeconds', 120)}"))
    _field(console, "Paused", _scalar("paused", bool(spec.get("paused"))))
    failures = status.get("failures") or []
    if failures:
        console.print(Text("Failed Nodes:", style="bold"))
        rows = [f for f in failures if isinstance(f, dict)]
        cols: list[Column] = [("NODE", lambda f: str(f.get("node", "?"))),
                              ("REASON", lambda f: str(f.get("reason", "?"))),
                              ("MESSAGE", lambda f: str(f.get("message", "")))]
        print_rstripped(console, _table(cols, rows), indent=2)


def _quantity(value: Any, name: str) -> str:
    if not isinstance(value, int):
        return "-" if value is None else str(value)
    return format_cpu(value) if name == "cpu" else format_memory(value)


def _table(cols: list[Column], items: list[dict[str, Any]]) -> Table:
    t = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 3, 0, 0), header_style="bold")
    for title, _ in cols:
        t.add_column(title, no_wrap=True, overflow="ignore")
    for item in items:
        t.add_row(*(fn(item) for _, fn in cols))
    return t


REVISION_ANNOTATION = "edgefed.io/revision"
"""The revision of a pod's current spec, set by cloudcore (its `naming.REVISION`)."""


def pod_revision(o: dict[str, Any]) -> str | None:
    """The revision the pod should run, if cloudcore recorded it."""
    rev = ((o.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    return rev if isinstance(rev, str) else None


def pod_up_to_date(o: dict[str, Any]) -> bool:
    """Whether the pod's status is about its current spec (no revision recorded: yes)."""
    want = pod_revision(o)
    return want is None or (o.get("status") or {}).get("revision") == want


TABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "Node": ("metadata.name", "status.ready", "spec.unschedulable", "status.lastSeen",
             "status.ackedGen", "status.desiredGen"),
    "Pod": ("metadata.name", "metadata.namespace", "metadata.annotations", "status.nodeName",
            "spec.nodeName", "status.phase", "status.containerStatuses", "status.reason",
            "status.revision"),
}
"""What the default (not wide) table of a kind reads: `get` asks cloudcore for only
these fields, which makes a 100k-node table several times cheaper to fetch and parse."""

PLAIN_ROWS = 2000
"""Above this many rows even a terminal gets the plain (uncolored) layout: rich's
table layout costs too much for 100k rows, and nobody reads colors at that size."""


def table(
    console: Console,
    kind: Kind,
    items: list[dict[str, Any]],
    *,
    wide: bool = False,
    all_namespaces: bool = False,
    mixed: bool = False,
) -> None:
    cols = columns(kind, wide=wide, all_namespaces=all_namespaces, mixed=mixed)
    if not console.is_terminal or len(items) > PLAIN_ROWS:
        print_rows(console, cols, items, header=True)
        return
    print_rstripped(console, _table(cols, items))


def _plain(cell: str | Text) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _node_status_plain(node: dict[str, Any]) -> str:
    st = node.get("status") or {}
    ready = str(st.get("ready") or "Unknown")
    return ready + ",SchedulingDisabled" if (node.get("spec") or {}).get("unschedulable") else ready


def _gen_plain(node: dict[str, Any]) -> str:
    st = node.get("status") or {}
    return f"{st.get('ackedGen') or 0}/{st.get('desiredGen') or 0}"


def _name_plain(o: dict[str, Any]) -> str:
    return str((o.get("metadata") or {}).get("name") or "?")


_PLAIN: dict[Any, Callable[[dict[str, Any]], str]] = {
    _node_status: _node_status_plain,
    _gen: _gen_plain,
    _name: _name_plain,
}
"""Uncolored, faster twins of the hot column functions, for plain layout of big lists."""


def print_rows(
    console: Console,
    cols: list[Column],
    items: list[dict[str, Any]],
    *,
    header: bool,
    widths: list[int] | None = None,
) -> list[int]:
    """The table as plain aligned text, laid out exactly like the rich table in a pipe
    (columns 3 blanks apart, no trailing blanks), in one write. Returns the column
    widths so a watch can print later rows aligned with the first ones."""
    now = time.time()
    fns = [_last_seen_at(now) if fn is _last_seen else _PLAIN.get(fn, fn) for _, fn in cols]
    # Column by column: a few list comprehensions instead of a loop per cell, which
    # is what a 100k-row table costs.
    columns = [[c if type(c) is str else _plain(c) for c in map(fn, items)] for fn in fns]
    if header:
        for col, (title, _) in zip(columns, cols, strict=True):
            col.insert(0, title)
    w = list(widths) if widths else [0] * len(cols)
    last = len(cols) - 1
    for i, col in enumerate(columns):
        if col:
            w[i] = max(w[i], max(map(len, col)))  # noqa: PLW3301 (no 100k-arg call)
        if i != last:
            columns[i] = [c.ljust(w[i]) for c in col]
    lines = [line.rstrip() for line in map("   ".join, zip(*columns, strict=True))]
    if lines:
        out = console.file
        out.write("\n".join(lines) + "\n")
        out.flush()
    return w


def simple_table(console: Console, headers: list[str], rows: list[list[str]]) -> None:
    cols: list[Column] = [(h, lambda r, i=i: r[i]) for i, h in enumerate(headers)]
    items: list[Any] = rows
    if console.is_terminal:
        print_rstripped(console, _table(cols, items))
    else:
        print_rows(console, cols, items, header=True)


def events_table(console: Console, items: list[dict[str, Any]]) -> None:
    rows = [
        [
            age(e.get("lastTimestamp")),
            str(e.get("type", "-")),
            str(e.get("reason", "-")),
            str(e.get("object", "-")),
            (f"(x{e['count']}) " if int(e.get("count") or 1) > 1 else "")
            + str(e.get("message", "")),
        ]
        for e in items
    ]
    simple_table(console, ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], rows)


def print_rstripped(console: Console, renderable: RenderableType, *, indent: int = 0) -> None:
    """Print without the trailing spaces rich pads table rows with.

    kubectl's tables end each line at the last character; trailing blanks would
    make `fedctl get ... | awk` and diffs of saved output noisy.
    """
    for line in console.render_lines(renderable, pad=False):
        segs = list(line)
        while segs and not segs[-1].control and not segs[-1].text.strip():
            segs.pop()
        if segs:
            last = segs[-1]
            segs[-1] = Segment(last.text.rstrip(), last.style, last.control)
        if indent:
            segs.insert(0, Segment(" " * indent))
        segs.append(Segment.line())
        console.print(Segments(segs), end="")


# --- machine-readable output -------------------------------------------------------


def as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items}


def write_json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def write_yaml(out: TextIO, value: Any) -> None:
    """`value` as YAML for a person: `readable` first (JSON stays the API's own form)."""
    out.write(yaml.safe_dump(readable(value), sort_keys=False, default_flow_style=False,
                             allow_unicode=True))


_QUANTITY_MAPS = {"capacity", "allocatable"}
"""Status maps whose cpu is in millicores and memory in bytes (a node's)."""


def readable(value: Any) -> Any:
    """An API object (or a List of them) as a person reads it, still fit to apply back.

    What cloudcore sends is exact but raw: a Node carries `namespace: default`, times are
    Unix seconds, the forecast floats show float32 noise (0.1550000011920929) and a node's
    capacity is millicores and bytes without a unit. Here a cluster-scoped object has no
    namespace, every time field is RFC 3339 (UTC), floats keep 6 significant digits and
    capacity and allocatable read as Kubernetes quantities (cpu `2` or `1500m`, memory
    `8Gi`). Only the copy printed changes; apply ignores status either way.
    """
    if isinstance(value, list):
        return [readable(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = _readable_tree(value, key="")
    info = BY_KIND.get(str(value.get("kind")))
    meta = out.get("metadata")
    if info is not None and not info.namespaced and isinstance(meta, dict):
        meta.pop("namespace", None)
    return out


def _readable_tree(value: Any, *, key: str, parent: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _readable_tree(v, key=k, parent=key) for k, v in value.items()}
    if isinstance(value, list):
        if key == "items":  # a List's items are objects of their own
            return [readable(v) for v in value]
        return [_readable_tree(v, key=key, parent=parent) for v in value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if key in _TIME_KEYS or key.endswith("Timestamp"):
        return rfc3339(value)
    if parent in _QUANTITY_MAPS and isinstance(value, int):
        if key == "cpu":
            return format_cpu(value)
        if key in ("memory", "ephemeral-storage"):
            return format_memory(value)
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def rfc3339(value: Any) -> str:
    """Unix seconds (or an RFC 3339 string) as RFC 3339 in UTC, to the second."""
    t = _epoch(value)
    if t is None:
        return str(value)
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- describe ----------------------------------------------------------------------


def _scalar(key: str, value: Any) -> str:
    if value is None:
        return NONE
    if key in _TIME_KEYS or key == "creationTimestamp":
        return timestamp(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def tree(value: Any, *, key: str = "", indent: int = 0) -> Iterable[Text]:
    """Nested dicts and lists as indented `key: value` lines (all fields, none hidden)."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return
        for k, v in value.items():
            if (
                isinstance(v, dict)
                and v
                and all(not isinstance(x, dict | list) for x in v.values())
                and k
                in (
                    "labels",
                    "annotations",
                    "nodeSelector",
                    "matchLabels",
                )
            ):
                yield Text.assemble(pad, (f"{k}:", "bold"), f" {labels_text(v)}")
            elif isinstance(v, dict | list) and v:
                if isinstance(v, list) and all(not isinstance(x, dict | list) for x in v):
                    yield Text.assemble(pad, (f"{k}:", "bold"), " " + ", ".join(map(str, v)))
                else:
                    yield Text.assemble(pad, (f"{k}:", "bold"))
                    yield from tree(v, key=k, indent=indent + 1)
            else:
                shown = NONE if isinstance(v, dict | list) else _scalar(k, v)
                yield Text.assemble(pad, (f"{k}:", "bold"), f" {shown}")
    elif isinstance(value, list):
        for item in value:
            lines = list(tree(item, key=key, indent=indent + 1))
            if not lines:
                yield Text(f"{pad}- {_scalar(key, item)}")
                continue
            first = lines[0]
            first = Text.assemble(pad, "- ", first[len(pad) + 2 :])
            yield first
            yield from lines[1:]
    else:
        yield Text(f"{pad}{_scalar(key, value)}")


def _field(console: Console, label: str, value: str | Text, *, indent: int = 0) -> None:
    """`Label:` and its value in the value column (15), the label indented by `indent`."""
    head = f"{label}:".ljust(15 - indent - 1) + " "
    console.print(Text.assemble(" " * indent, (head, "bold"), value))


def _rollout(console: Console, obj: dict[str, Any]) -> None:
    """A workload's rollout: where it stands (from its status) and how it goes (spec)."""
    spec = obj.get("spec") or {}
    status = obj.get("status")
    console.print(Text("Rollout:", style="bold"))
    if isinstance(status, dict):
        _field(console, "Phase", _rollout_cell(obj), indent=2)
        _field(console, "Message", str(_dig(status, "rollout", "message", default=NONE)),
               indent=2)
        _field(console, "Revisions", f"current {status.get('currentRevision') or NONE}, "
               f"update {status.get('updateRevision') or NONE}", indent=2)
        desired, updated, ready, available = status_counts(obj)
        _field(console, "Pods", f"{updated} updated, {ready} ready, {available} available "
               f"of {desired} desired ({_dig(status, 'rollout', 'failed', default=0)} "
               "failed)", indent=2)
    else:
        _field(console, "Phase", f"{NONE} (no status reported yet)", indent=2)
    field = "updateStrategy" if obj.get("kind") != "Deployment" else "strategy"
    strategy = spec.get(field)
    if not isinstance(strategy, dict):
        _field(console, "Strategy", f"all pods at once (no {field})", indent=2)
        return
    surge = _dig(strategy, "rollingUpdate", "maxSurge", default=0)
    _field(console, "Strategy", (
        f"{strategy.get('type') or 'RollingUpdate'}: "
        + (f"maxSurge {surge}, " if surge not in (0, "0%") else "")
        + f"maxUnavailable "
        f"{_dig(strategy, 'rollingUpdate', 'maxUnavailable', default=1)}, failureThreshold "
        f"{strategy.get('failureThreshold', 0)}, autoRollback "
        f"{_scalar('autoRollback', strategy.get('autoRollback', True))}"), indent=2)
    _field(console, "Health Gate", f"minReadySeconds {spec.get('minReadySeconds', 0)}, "
           f"progressDeadlineSeconds {spec.get('progressDeadlineSeconds', 600)}", indent=2)
    _field(console, "Paused", _scalar("paused", bool(spec.get("paused"))), indent=2)


def describe(
    console: Console, kind: Kind, obj: dict[str, Any], related: list[dict[str, Any]] | None
) -> None:
    """kubectl-style description: a summary of what matters most, then every field.

    `related` are the pods of a node or a workload, shown as a table at the end
    (None when they could not be listed).
    """
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    _field(console, "Name", str(meta.get("name", "?")))
    if kind.namespaced:
        _field(console, "Namespace", str(meta.get("namespace", "default")))
    _field(console, "Kind", str(obj.get("kind", kind.kind)))
    _field(console, "Labels", labels_text(meta.get("labels")))
    _field(console, "Annotations", labels_text(meta.get("annotations")))
    if meta.get("creationTimestamp"):
        _field(console, "Created", timestamp(meta["creationTimestamp"]))

    if kind.kind == "Node":
        ready = _node_status(obj)
        if status.get("reason"):
            ready.append(f" ({status['reason']})")
        _field(console, "Ready", ready)
        _field(
            console,
            "Last Seen",
            timestamp(status["lastSeen"]) if status.get("lastSeen") else "never",
        )
        acked, desired = status.get("ackedGen", 0), status.get("desiredGen", 0)
        behind = (
            f" (behind by {desired - acked})"
            if isinstance(acked, int) and isinstance(desired, int) and acked < desired
            else ""
        )
        _field(
            console,
            "Generation",
            Text(f"acked {acked} / desired {desired}{behind}", style="yellow" if behind else ""),
        )
        _field(
            console,
            "Platform",
            f"{status.get('os', '-')}/{status.get('arch', '-')}, "
            f"agent {status.get('agentVersion') or '-'}",
        )
    elif kind.kind == "Pod":
        _field(console, "Node", _pod_node(obj))
        _field(console, "Phase", _styled(str(status.get("phase", "Pending")), _PHASE_STYLE))
        # The scheduler's verdict is what a user looks for first when a pod is Pending.
        _field(console, "Reason", str(status.get("reason") or NONE))
        _field(console, "Message", str(status.get("message") or NONE))
        _field(console, "Ready", _pod_ready(obj))
        _field(console, "Restarts", str(_pod_restarts(obj)))
    elif kind.kind in ("DaemonSet", "Deployment"):
        _field(console, "Ready", workload_ready(obj))
        if kind.kind == "Deployment":
            _field(console, "Replicas", str(_dig(obj, "spec", "replicas", default=1)))
        _field(console, "Node Selector", _node_selector(obj))
        _field(console, "Images", _images(obj))
        _rollout(console, obj)
    elif kind.kind == "AgentUpgrade":
        _agent_upgrade(console, obj)

    shown = readable(obj)  # quantities with units, no float noise (times: _scalar's)
    rest = {k: v for k, v in shown.items() if k not in ("apiVersion", "kind", "metadata")}
    extra_meta = {
        k: v
        for k, v in (shown.get("metadata") or {}).items()
        if k not in ("name", "namespace", "labels", "annotations", "creationTimestamp")
    }
    if extra_meta:
        rest = {"metadata": extra_meta, **rest}
    for section, value in rest.items():
        console.print(Text(f"{section[:1].upper()}{section[1:]}:", style="bold"))
        lines = list(tree(value, key=section, indent=1))
        for line in lines or [Text(f"  {NONE}")]:
            console.print(line)

    if related is not None:
        console.print(Text("Pods:", style="bold"))
        if not related:
            console.print(f"  {NONE}")
        else:
            cols = columns(POD, wide=False, all_namespaces=False)
            print_rstripped(console, _table(cols, related), indent=2)


def unified_diff(ref: str, live: dict[str, Any], applied: dict[str, Any]) -> str:
    """A unified diff of two objects as YAML, `--- ref (live)` / `+++ ref (applied)`."""
    import difflib

    def text(value: dict[str, Any]) -> list[str]:
        return yaml.safe_dump(value, sort_keys=False, default_flow_style=False,
                              allow_unicode=True).splitlines(keepends=True)

    return "".join(difflib.unified_diff(text(live), text(applied), fromfile=f"{ref} (live)",
                                        tofile=f"{ref} (applied)"))
