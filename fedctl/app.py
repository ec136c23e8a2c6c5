"""The fedctl commands: apply, get, describe, delete, wait.

Each command is small: parse flags, call `ApiClient`, hand the result to
`fedctl.render`. Errors travel as `FedctlError` subclasses up to `_handles_errors`,
which prints one line on stderr and exits with the error's code (0 ok, 1 error,
2 usage, 3 not found); a traceback never reaches the user.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ParamSpec, TypeVar

import httpx
import typer
from rich.console import Console
from rich.text import Text

from fedctl import kinds, manifests, render
from fedctl.client import ApiClient
from fedctl.config import Settings, resolve
from fedctl.errors import FedctlError, NotFound, Unreachable, UsageError

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="fedctl",
    help="Drive an edgefed fleet: apply workloads, inspect nodes and pods, wait for rollout.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class State:
    """What the global options resolve to; `transport` lets tests inject httpx.MockTransport."""

    server_flag: str | None = None
    timeout: float = 10.0
    transport: httpx.BaseTransport | None = None

    def settings(self) -> Settings:
        return resolve(flag=self.server_flag, timeout=self.timeout)

    def client(self) -> ApiClient:
        return ApiClient(self.settings(), transport=self.transport)


class Output(StrEnum):
    wide = "wide"
    json = "json"
    yaml = "yaml"
    name = "name"


def stdout_console() -> Console:
    """A console on stdout: colors on a terminal only, and no wrapping in a pipe.

    Rich assumes 80 columns when stdout is not a terminal, which would truncate
    table columns in `fedctl get nodes | grep`; a pipe gets unlimited width instead.
    """
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=100_000, color_system=None)
    return console


def _fail(message: str) -> None:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if not err.is_terminal:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        return
    err.print(Text.assemble(("error:", "bold red"), " ", message))


def _handles_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn FedctlError into one stderr line and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except FedctlError as exc:
            _fail(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def _state(ctx: typer.Context) -> State:
    obj = ctx.find_object(State)
    return obj if obj is not None else State()


@app.callback()
def _global(
    ctx: typer.Context,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            "-s",
            metavar="URL",
            help="cloudcore API base URL. Default: $FEDCTL_SERVER, then 'server' in "
            "~/.config/edgefed/fedctl.yaml, then http://127.0.0.1:8080.",
        ),
    ] = None,
    request_timeout: Annotated[
        float,
        typer.Option("--request-timeout", metavar="SECONDS", help="Timeout of each HTTP request."),
    ] = 10.0,
) -> None:
    state = ctx.ensure_object(State)
    state.server_flag = server
    state.timeout = request_timeout


# --- apply ------------------------------------------------------------------------


FilenameOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--filename",
        "-f",
        metavar="FILE|DIR|-",
        help="Manifest file, directory, or - for stdin. Repeatable.",
    ),
]


@app.command()
@_handles_errors
def apply(
    ctx: typer.Context,
    *,
    filename: FilenameOpt = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-R", help="Descend into subdirectories.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Ask cloudcore what would change; change nothing.")
    ] = False,
) -> None:
    """Create or update objects from multi-document YAML (validated locally first)."""
    if not filename:
        raise UsageError("apply needs -f FILE, -f DIR or -f - (stdin)")
    docs = manifests.load(filename, recursive=recursive)
    with _state(ctx).client() as api:
        results = api.apply([d.body for d in docs], dry_run=dry_run)
    console = stdout_console()
    suffix = " (dry run)" if dry_run else ""
    for r in results:
        kind = kinds.BY_KIND.get(str(r.get("kind")))
        singular = kind.singular if kind else str(r.get("kind", "object")).lower()
        console.print(f"{singular}/{r.get('name', '?')} {r.get('action', 'applied')}{suffix}")


# --- get --------------------------------------------------------------------------


def _namespace(namespace: str | None, all_namespaces: bool) -> str | None:
    """kubectl's rule: -A means every namespace, otherwise -n or 'default'."""
    if all_namespaces and namespace:
        raise UsageError("-n/--namespace and -A/--all-namespaces cannot be combined")
    return None if all_namespaces else (namespace or "default")


def _sort_key(o: dict[str, Any]) -> tuple[str, str]:
    meta = o.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: 'default').")
]
AllNsOpt = Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")]
SelectorOpt = Annotated[
    str | None, typer.Option("--selector", "-l", metavar="KEY=VALUE[,...]", help="Label selector.")
]


@app.command()
@_handles_errors
def get(
    ctx: typer.Context,
    *,
    resource: Annotated[str, typer.Argument(metavar="RESOURCE", help=f"One of: {kinds.KNOWN}.")],
    name: Annotated[str | None, typer.Argument(help="Show only this object.")] = None,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNsOpt = False,
    selector: SelectorOpt = None,
    node: Annotated[
        str | None, typer.Option("--node", help="Only pods placed on this node.")
    ] = None,
    output: Annotated[
        Output | None, typer.Option("--output", "-o", help="wide, json, yaml or name.")
    ] = None,
) -> None:
    """List objects as a table, or show one; -o json|yaml for scripts."""
    group = kinds.resolve(resource)
    ns = _namespace(namespace, all_namespaces)
    found: list[tuple[kinds.Kind, dict[str, Any]]] = []
    with _state(ctx).client() as api:
        if name:
            for kind in group:
                try:
                    found.append((kind, api.get(kind, name, namespace=ns or "default")))
                except NotFound:
                    if len(group) == 1:
                        raise
            if not found:
                raise NotFound(
                    f'no workload named "{name}" in namespace "{ns or "default"}"', status=404
                )
        else:
            for kind in group:
                items = api.list(kind, namespace=ns, selector=selector, node=node)
                found += [(kind, o) for o in sorted(items, key=_sort_key)]

    objs = [o for _, o in found]
    if output in (Output.json, Output.yaml):
        value: Any = objs[0] if name and len(objs) == 1 else render.as_list(objs)
        writer = render.write_json if output is Output.json else render.write_yaml
        writer(sys.stdout, value)
        return
    console = stdout_console()
    if output is Output.name:
        for kind, o in found:
            console.print(f"{kind.singular}/{o.get('metadata', {}).get('name', '?')}")
        return
    if not found:
        where = (
            "any namespace"
            if ns is None or not any(k.namespaced for k in group)
            else f"namespace {ns!r}"
        )
        sys.stderr.write(f"No {resource} found in {where}.\n")
        return
    mixed = len(group) > 1
    render.table(
        console, group[0], objs, wide=output is Output.wide, all_namespaces=ns is None, mixed=mixed
    )


# --- describe ---------------------------------------------------------------------


def _selector_of(obj: dict[str, Any]) -> str | None:
    spec = obj.get("spec") or {}
    labels = (spec.get("selector") or {}).get("matchLabels") or (
        (spec.get("template") or {}).get("metadata") or {}
    ).get("labels")
    if not labels:
        return None
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@app.command()
@_handles_errors
def describe(
    ctx: typer.Context,
    *,
    resource: Annotated[
        str, typer.Argument(metavar="KIND", help="node, pod, daemonset, deployment or configmap.")
    ],
    name: Annotated[str, typer.Argument()],
    namespace: NamespaceOpt = None,
) -> None:
    """Every field of one object, with its pods (for a node or workload)."""
    (kind,) = kinds.resolve(resource, allow_group=False)
    ns = namespace or "default"
    with _state(ctx).client() as api:
        obj = api.get(kind, name, namespace=ns)
        related: list[dict[str, Any]] | None = None
        try:
            if kind is kinds.NODE:
                related = api.list(kinds.POD, node=name)
            elif kind in (kinds.DAEMONSET, kinds.DEPLOYMENT) and (sel := _selector_of(obj)):
                related = api.list(kinds.POD, namespace=ns, selector=sel)
        except FedctlError:
            related = None  # the object itself is shown; its pods are a bonus
    render.describe(
        stdout_console(), kind, obj, sorted(related, key=_sort_key) if related is not None else None
    )


# --- delete -----------------------------------------------------------------------


@app.command()
@_handles_errors
def delete(
    ctx: typer.Context,
    *,
    resource: Annotated[
        str | None, typer.Argument(metavar="[KIND]", help="Kind of the objects to delete.")
    ] = None,
    names: Annotated[list[str] | None, typer.Argument(metavar="[NAME]...")] = None,
    filename: FilenameOpt = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-R", help="Descend into subdirectories.")
    ] = False,
    namespace: NamespaceOpt = None,
    ignore_not_found: Annotated[
        bool, typer.Option("--ignore-not-found", help="Exit 0 even if something was already gone.")
    ] = False,
) -> None:
    """Delete objects by KIND NAME..., or every object in -f FILE."""
    targets: list[tuple[kinds.Kind, str | None, str]] = []
    if filename:
        if resource or names:
            raise UsageError("give either KIND NAME... or -f FILE, not both")
        targets = [
            (d.kind, d.namespace, d.name) for d in manifests.load(filename, recursive=recursive)
        ]
    else:
        if not resource or not names:
            raise UsageError("delete needs KIND NAME... or -f FILE")
        (kind,) = kinds.resolve(resource, allow_group=False)
        targets = [(kind, namespace or "default", n) for n in names]

    console = stdout_console()
    missing = 0
    with _state(ctx).client() as api:
        for kind, ns, name in targets:
            try:
                api.delete(kind, name, namespace=ns)
            except NotFound as exc:
                missing += 1
                if not ignore_not_found:
                    _fail(exc.message)
                continue
            console.print(f"{kind.singular}/{name} deleted")
    if missing and not ignore_not_found:
        raise typer.Exit(NotFound.exit_code)


# --- wait -------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
_NODE_STATES = ("Ready", "NotReady", "Unknown")


def parse_duration(text: str) -> float:
    """'60', '60s', '2m', '1h', '500ms' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise UsageError(f"--timeout: {text!r} is not a duration (use 60, 60s, 2m or 1h)")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * scale


def _condition(
    kind: kinds.Kind, wanted: str
) -> tuple[str, Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], str]]:
    """(canonical name, predicate, what-it-is-now) for `--for=`."""
    if kind is kinds.POD:
        allowed: tuple[str, ...] = _POD_PHASES
        canonical = next((p for p in allowed if p.lower() == wanted.lower()), None)

        def now(o: dict[str, Any]) -> str:
            st = o.get("status") or {}
            reason = st.get("reason") or render._pod_reason(o)
            return f"{st.get('phase', 'Pending')}" + (
                f": {reason}" if reason and reason != "-" else ""
            )

        def ok(o: dict[str, Any]) -> bool:
            return (o.get("status") or {}).get("phase", "Pending") == canonical
    elif kind is kinds.NODE:
        allowed = _NODE_STATES
        canonical = next((p for p in allowed if p.lower() == wanted.lower()), None)

        def now(o: dict[str, Any]) -> str:
            return str((o.get("status") or {}).get("ready", "Unknown"))

        def ok(o: dict[str, Any]) -> bool:
            return (o.get("status") or {}).get("ready", "Unknown") == canonical
    else:
        raise UsageError("wait works on pods and nodes")
    if canonical is None:
        raise UsageError(f"--for: {wanted!r} is not one of: {', '.join(allowed)} (or delete)")
    return canonical, ok, now


@app.command()
@_handles_errors
def wait(
    ctx: typer.Context,
    *,
    resource: Annotated[str, typer.Argument(metavar="RESOURCE", help="pods or nodes.")],
    name: Annotated[str | None, typer.Argument(help="Wait for this object only.")] = None,
    for_: Annotated[
        str,
        typer.Option(
            "--for",
            metavar="STATE",
            help="Pod phase (Running, Succeeded, ...), node state (Ready), or 'delete'.",
        ),
    ] = "Running",
    selector: SelectorOpt = None,
    namespace: NamespaceOpt = None,
    all_namespaces: AllNsOpt = False,
    timeout: Annotated[
        str,
        typer.Option(
            "--timeout", metavar="DURATION", help="Give up after this long (60, 90s, 2m)."
        ),
    ] = "60s",
    interval: Annotated[
        float, typer.Option("--interval", metavar="SECONDS", help="Polling interval.")
    ] = 1.0,
) -> None:
    """Poll until every matching object reaches a state (and at least one matches).

    Exits 0 when met, 1 with a summary of the stragglers on timeout. A cloudcore that
    is briefly unreachable (restarting) is retried until the timeout.
    """
    (kind,) = kinds.resolve(resource, allow_group=False)
    if kind not in (kinds.POD, kinds.NODE):
        raise UsageError("wait works on pods and nodes")
    limit = parse_duration(timeout)
    if interval <= 0:
        raise UsageError("--interval: must be a positive number of seconds")
    deleting = for_.lower() == "delete"
    if deleting:
        canonical, ok, now = "deleted", (lambda o: False), (lambda o: "present")
    else:
        canonical, ok, now = _condition(kind, for_)
    ns = _namespace(namespace, all_namespaces)
    what = f"{kind.plural}" + (f" {name}" if name else "") + (f" -l {selector}" if selector else "")

    deadline = time.monotonic() + limit
    last_error: str | None = None
    items: list[dict[str, Any]] = []
    with _state(ctx).client() as api:
        while True:
            try:
                if name:
                    try:
                        items = [api.get(kind, name, namespace=ns or "default")]
                    except NotFound:
                        items = []
                else:
                    items = api.list(kind, namespace=ns, selector=selector)
                last_error = None
            except Unreachable as exc:
                last_error = exc.message
            if last_error is None:
                if deleting and not items:
                    stdout_console().print(f"{what} deleted")
                    return
                if items and all(ok(o) for o in items):
                    console = stdout_console()
                    for o in sorted(items, key=_sort_key):
                        ref = f"{kind.singular}/{o.get('metadata', {}).get('name', '?')}"
                        console.print(f"{ref} condition met")
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(interval, remaining))

    if last_error is not None:
        raise FedctlError(
            f"timed out after {timeout} waiting for {what} to be {canonical}; "
            f"last error: {last_error}"
        )
    if not items:
        raise FedctlError(
            f"timed out after {timeout} waiting for {what} to be {canonical}: nothing matched"
        )
    pending = [o for o in sorted(items, key=_sort_key) if not ok(o)]
    shown = ", ".join(f"{o.get('metadata', {}).get('name', '?')} ({now(o)})" for o in pending[:5])
    more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
    raise FedctlError(
        f"timed out after {timeout} waiting for {what} to be {canonical}: "
        f"{len(items) - len(pending)}/{len(items)} are; not yet: {shown}{more}"
    )


def debug_enabled() -> bool:
    return os.environ.get("FEDCTL_DEBUG", "") not in ("", "0")
