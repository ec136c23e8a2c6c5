"""The fedctl commands: apply, get (-w), describe, delete, wait, rollout, label,
cordon, uncordon, drain, events, token, apitoken, node, brokers and config.

Each command is small: parse flags, call `ApiClient`, hand the result to
`fedctl.render`. Errors travel as `FedctlError` subclasses up to `_handles_errors`,
which prints one line on stderr and exits with the error's code (0 ok, 1 error,
2 usage, 3 not found); a traceback never reaches the user.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import httpx
import typer
from rich.console import Console
from rich.text import Text

from fedctl import config as cfg
from fedctl import kinds, render
from fedctl.client import ApiClient
from fedctl.config import Settings, resolve
from fedctl.errors import (
    FedctlError,
    ManifestError,
    NotFound,
    ServerError,
    Unreachable,
    UsageError,
)

if TYPE_CHECKING:
    from fedctl import manifests

# fedctl.manifests (pydantic and every object model, about 0.12 s to import) is
# imported by the commands that read manifests, not by `get` or `logs`.

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="fedctl",
    help="Drive an edgefed fleet: apply workloads, inspect nodes and pods, wait for rollout.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class State:
    """What the global options resolve to; `transport` lets tests inject httpx.MockTransport."""

    server_flag: str | None = None
    timeout: float = 10.0
    transport: httpx.BaseTransport | None = None
    token_flag: str | None = None
    context_flag: str | None = None
    ca_flag: str | None = None
    insecure_skip_tls_verify: bool = False

    def settings(self) -> Settings:
        return resolve(
            flag=self.server_flag,
            timeout=self.timeout,
            token=self.token_flag,
            context=self.context_flag,
            ca_file=self.ca_flag,
            insecure_skip_tls_verify=self.insecure_skip_tls_verify,
        )

    def client(self) -> ApiClient:
        settings = self.settings()
        if settings.insecure_skip_tls_verify and settings.server.startswith("https:"):
            sys.stderr.write(f"warning: not verifying the TLS certificate of {settings.server}"
                             " (insecure-skip-tls-verify): anyone on the path can read and "
                             "change this session, token included\n")
        return ApiClient(settings, transport=self.transport)


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
    *,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            "-s",
            metavar="URL",
            help="cloudcore API base URL. Default: $FEDCTL_SERVER, then 'server' in "
            "~/.config/edgefed/fedctl.yaml, then https://127.0.0.1:8080.",
        ),
    ] = None,
    request_timeout: Annotated[
        float,
        typer.Option("--request-timeout", metavar="SECONDS", help="Timeout of each HTTP request."),
    ] = 10.0,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            help="API bearer token. Default: $FEDCTL_TOKEN, then the context's token.",
        ),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            metavar="NAME",
            help="Use this context of the config file (default: $FEDCTL_CONTEXT, then "
            "current-context).",
        ),
    ] = None,
    certificate_authority: Annotated[
        str | None,
        typer.Option(
            "--certificate-authority",
            metavar="FILE",
            help="PEM CA to verify cloudcore's HTTPS certificate with (its fleet CA). "
            "Default: $FEDCTL_CA, then the context's certificate-authority.",
        ),
    ] = None,
    insecure_skip_tls_verify: Annotated[
        bool,
        typer.Option(
            "--insecure-skip-tls-verify",
            help="Do not verify cloudcore's HTTPS certificate (unsafe: warns).",
        ),
    ] = False,
) -> None:
    state = ctx.ensure_object(State)
    state.server_flag = server
    state.timeout = request_timeout
    state.token_flag = token
    state.context_flag = context
    state.ca_flag = certificate_authority
    state.insecure_skip_tls_verify = insecure_skip_tls_verify


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
        bool,
        typer.Option("--dry-run", help="Ask cloudcore what would change (it still validates) "
                     "and show a YAML diff of each object that would be configured; change "
                     "nothing."),
    ] = False,
    create_namespace: Annotated[
        bool,
        typer.Option("--create-namespace", help="Create the namespaces the documents name "
                     "that do not exist yet (as Helm's flag); without it an object in a "
                     "namespace that does not exist is refused."),
    ] = False,
) -> None:
    """Create or update objects from multi-document YAML, each document on its own.

    Every document is validated locally first and applied on its own, as kubectl does:
    a refused document is reported with every bad field (its path, why, and the
    supported alternative where there is one) and the others still go on. A kind
    edgefed does not serve (Service, Ingress, ServiceAccount, RBAC, storage claims) is
    reported as skipped with the reason. Exits 1 if any document was refused.

    Namespaces must exist: a Namespace document is applied before the other documents
    of the same call wherever it is written, `fedctl create namespace NAME` makes one,
    and --create-namespace creates the missing ones.

    What `get -o yaml|json` prints can be applied back: a `kind: List` is expanded,
    and status and server-managed metadata (uid, generation, creationTimestamp,
    resourceVersion) are ignored.
    """
    if not filename:
        raise UsageError("apply needs -f FILE, -f DIR or -f - (stdin)")
    from fedctl import plan

    outcomes = plan.plan(filename, recursive=recursive)
    # Namespaces and PriorityClasses first (kubectl users rely on a file's Namespace
    # preceding what is in it; Helm installs both before workloads)
    todo = sorted((o.document for o in outcomes if o.document is not None),
                  key=lambda d: d.kind.kind not in ("Namespace", "PriorityClass"))
    single = len(outcomes) == 1
    refused = [o for o in outcomes if o.status == "refused"]
    suffix = " (dry run)" if dry_run else ""
    applied = 0
    with _state(ctx).client() as api:
        answers, made = _apply_all(api, todo, dry_run=dry_run,
                                   create_namespaces=create_namespace)
        for ns in made:
            _print(f"namespace/{ns} created{suffix}")
        for o in outcomes:
            if o.status == "skipped":
                _print(f"{o.ref} skipped: {o.reason}")
            elif o.status == "refused":
                _report_refused(o.label, [p.line() for p in o.problems])
            else:
                assert o.document is not None
                r = answers[id(o.document)]
                if isinstance(r, ServerError) or r.get("status") == "refused":
                    refused.append(o)
                    _report_refused(o.label, _server_problems(r, o.document), by="cloudcore")
                    continue
                applied += 1
                action = r.get("action", "applied")
                _print(f"{o.document.ref} {action}{suffix}")
                if dry_run and action == "configured":
                    _print(_dry_run_diff(api, o.document), end="")
    if refused and not single:
        skipped = sum(o.status == "skipped" for o in outcomes)
        raise ManifestError(
            f"{len(refused)} of {len(outcomes)} documents refused "
            f"({applied} {'would be applied' if dry_run else 'applied'}, {skipped} skipped)")
    if refused:
        raise typer.Exit(1)


RETRY_SINGLY = frozenset({400, 404, 409, 413, 422})
"""A batch apply refused with one of these by a cloudcore that applies all or nothing
(from before per-document results) is sent again one document at a time."""

Answer = dict[str, Any] | ServerError
"""cloudcore's result for one document, or the error that refused it alone."""


def _apply_all(api: ApiClient, docs: list[manifests.Document], *, dry_run: bool,
               create_namespaces: bool) -> tuple[dict[int, Answer], list[str]]:
    """Every document's answer (by `id` of the document) and the namespaces cloudcore
    created. One request asks for per-document results; a cloudcore from before them
    answers all or nothing, and when it refuses, each document is sent on its own, in
    order (Namespaces and PriorityClasses first)."""
    if not docs:
        return {}, []
    try:
        answer = api.apply_documents([d.body for d in docs], dry_run=dry_run,
                                     per_document=True, create_namespaces=create_namespaces)
    except ServerError as exc:
        if exc.status not in RETRY_SINGLY:
            raise
        answer = None
    if answer is not None:
        if len(answer.results) != len(docs):
            raise ServerError(f"cloudcore answered an apply of {len(docs)} documents with "
                              f"{len(answer.results)} results", status=200)
        return {id(d): r for d, r in zip(docs, answer.results, strict=True)}, (
            answer.namespaces_created)
    out: dict[int, Answer] = {}
    made: list[str] = []
    for d in docs:
        try:
            one = api.apply_documents([d.body], dry_run=dry_run,
                                      create_namespaces=create_namespaces)
        except ServerError as exc:
            if exc.status not in RETRY_SINGLY:  # auth, a bug: stop here
                raise
            out[id(d)] = exc
            continue
        if len(one.results) != 1:
            raise ServerError(f"cloudcore answered the apply of one document with "
                              f"{len(one.results)} results", status=200)
        out[id(d)] = one.results[0]
        made += one.namespaces_created
    return out, made


_DOCUMENT_PREFIX = re.compile(r"^documents\[\d+\](\.items\[\d+\])?: ")


def _server_problems(answer: Answer, doc: manifests.Document) -> list[str]:
    """cloudcore's refusal of one document, without its `documents[0]: ` prefix; a
    refusal listing several problems one a line (the pod security policy's violations)
    gives one problem each, without the object's name that starts each line; one with
    several problems in `errors` (every bad field of a document) gives a line each."""
    if isinstance(answer, ServerError):
        message, errors = answer.message, answer.errors
    else:
        message = str(answer.get("error") or "refused")
        errors = [e for e in answer.get("errors") or () if isinstance(e, dict)]
    first, *rest = _DOCUMENT_PREFIX.sub("", message).splitlines() or [""]
    if not rest:
        if len(errors) > 1:
            return [f"{len(errors)} problems"] + [
                f"{e['field']}: {e.get('message')}" if e.get("field") else str(e.get("message"))
                for e in errors]
        return [first]
    where = f"{doc.kind.kind} {doc.namespace}/{doc.name}: " if doc.namespace else (
        f"{doc.kind.kind} {doc.name}: ")
    return [first.rstrip(":")] + [line.removeprefix(where) for line in rest if line.strip()]


def _print(text: str, *, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def _report_refused(label: str, lines: list[str], *, by: str = "") -> None:
    """A refused document on stderr: one line for one problem, else a header and the
    problems indented under it."""
    who = f"refused by {by}" if by else "refused"
    if len(lines) == 1:
        _fail(f"{label}: {who}: {lines[0]}" if by else f"{label}: {lines[0]}")
        return
    if by:  # cloudcore's own summary, then its lines
        _fail(f"{label}: {who}: {lines[0]}:")
        lines = lines[1:]
    else:
        _fail(f"{label}: {who}, {len(lines)} problems:")
    sys.stderr.write("".join(f"  {line}\n" for line in lines))
    sys.stderr.flush()


def _dry_run_diff(api: ApiClient, doc: manifests.Document) -> str:
    """The YAML diff between the live object and `doc`, as `apply` would compare them."""
    from fedctl import manifests

    try:
        live = api.get(doc.kind, doc.name, namespace=doc.namespace)
        before = manifests.comparable(live, live=live)
        after = manifests.comparable(doc.body, live=live)
    except (FedctlError, ValueError) as exc:  # the result line is printed already
        return f"  (no diff: {getattr(exc, 'message', exc)})\n"
    return render.unified_diff(doc.ref, before, after)


# --- create -----------------------------------------------------------------------

create_app = typer.Typer(help="Create an object from the command line (kubectl create).",
                         no_args_is_help=True)
app.add_typer(create_app, name="create")


@create_app.command("namespace")
@_handles_errors
def create_namespace(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    *,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate only.")] = False,
) -> None:
    """Create a namespace (without labels: the cloud's default pod security level).
    Exits 1 if it exists already, as kubectl does; `apply -f` of a Namespace document
    sets its labels."""
    from shared import validate

    try:
        validate.dns_name(name)
    except ValueError as exc:
        raise UsageError(f"namespace name {name!r}: {exc}") from None
    with _state(ctx).client() as api:
        try:
            api.get(kinds.NAMESPACE, name)
        except NotFound:
            pass
        else:
            raise ManifestError(f'namespaces "{name}" already exists')
        api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}],
                  dry_run=dry_run)
    _print(f"namespace/{name} created" + (" (dry run)" if dry_run else ""))


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
    watch: Annotated[
        bool,
        typer.Option("--watch", "-w", help="After listing, print changes as they happen."),
    ] = False,
    watch_for: Annotated[
        str | None,
        typer.Option("--watch-for", metavar="DURATION", help="With -w: stop after this long."),
    ] = None,
) -> None:
    """List objects as a table, or show one; -o json|yaml for scripts; -w to watch.
    `get brokers` shows the partition -> broker map."""
    if resource.lower() in BROKER_NAMES:
        if watch or watch_for or name:
            raise UsageError("get brokers takes no name and no -w")
        with _state(ctx).client() as api:
            _show_brokers(api.call("GET", "brokermap", what="broker map"), output)
        return
    group = kinds.resolve(resource)
    ns = _namespace(namespace, all_namespaces)
    if watch or watch_for:
        if len(group) != 1:
            raise UsageError("-w watches one kind; name daemonsets or deployments")
        limit = parse_duration(watch_for) if watch_for else None
        _watch(ctx, group[0], name=name, ns=ns, selector=selector, node=node,
               output=output, limit=limit)
        return
    if output is Output.json and not name and group != (kinds.NAMESPACE,) and len(group) == 1:
        with _state(ctx).client() as api:
            if _json_fast(api, group[0], ns=ns, selector=selector, node=node):
                return
    found: list[tuple[kinds.Kind, dict[str, Any]]] = []
    fields = render.TABLE_FIELDS.get(group[0].kind) if output is None and len(group) == 1 else None
    if output is Output.name:
        fields = ("metadata.name", "metadata.namespace")
    with _state(ctx).client() as api:
        if name:
            for kind in group:
                try:
                    found.append((kind, api.get(kind, name, namespace=ns or "default")))
                except NotFound:
                    if kind is kinds.NAMESPACE and name in _namespaces_in_use(api):
                        found.append((kind, _implicit_namespace(name)))
                    elif len(group) == 1:
                        raise
            if not found:
                raise NotFound(
                    f'no workload named "{name}" in namespace "{ns or "default"}"', status=404
                )
        else:
            for kind in group:
                items = api.list(kind, namespace=ns, selector=selector, node=node, fields=fields)
                if kind is kinds.NAMESPACE and not selector:
                    items = _with_namespaces_in_use(api, items)
                found += [(kind, o) for o in items]  # cloudcore lists in (ns, name) order

    objs = [o for _, o in found]
    if output in (Output.json, Output.yaml):
        value: Any = objs[0] if name and len(objs) == 1 else render.as_list(objs)
        writer = render.write_json if output is Output.json else render.write_yaml
        writer(sys.stdout, value)
        return
    console = stdout_console()
    if output is Output.name:
        lines = [f"{kind.singular}/{o.get('metadata', {}).get('name', '?')}" for kind, o in found]
        if lines:
            console.file.write("\n".join(lines) + "\n")
        return
    if not found:
        where = (
            "any namespace"
            if ns is None or not any(k.namespaced for k in group)
            else f"namespace {ns!r}"
        )
        if any(k.namespaced for k in group):
            sys.stderr.write(f"No {resource} found in {where}.\n")
        else:
            sys.stderr.write(f"No {group[0].plural} found.\n")
        return
    mixed = len(group) > 1
    render.table(
        console, group[0], objs, wide=output is Output.wide, all_namespaces=ns is None, mixed=mixed
    )


# --- describe ---------------------------------------------------------------------


def _namespaces_in_use(api: ApiClient) -> set[str]:
    """The namespaces that objects live in, `default` always among them: Kubernetes
    has a Namespace object for each, cloudcore only for those applied as one (which
    carry labels, such as a pod security level). A kind the caller may not list
    (403) is left out."""
    used = {"default"}
    for kind in kinds.ALL:
        if not kind.namespaced:
            continue
        try:
            items = api.list(kind, fields=("metadata.namespace",))
        except FedctlError:
            continue
        used.update(str((o.get("metadata") or {}).get("namespace") or "default")
                    for o in items)
    return used


def _implicit_namespace(name: str) -> dict[str, Any]:
    """A namespace in use that has no Namespace object: shown as one, without an age."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _with_namespaces_in_use(api: ApiClient, objects: list[dict[str, Any]]) -> list[
        dict[str, Any]]:
    """`get namespaces`: the Namespace objects and every namespace in use, by name."""
    have = {str((o.get("metadata") or {}).get("name")) for o in objects}
    extra = [_implicit_namespace(n) for n in _namespaces_in_use(api) - have]
    return sorted([*objects, *extra], key=_sort_key)


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
    """Delete objects by KIND NAME..., or every object in -f FILE.

    With -f, a kind edgefed does not serve is skipped with the reason, as by apply, and
    a document is deleted by its kind and name even if apply would refuse a field of it.
    """
    targets: list[tuple[kinds.Kind, str | None, str]] = []
    unknown = 0
    if filename:
        if resource or names:
            raise UsageError("give either KIND NAME... or -f FILE, not both")
        from fedctl import plan

        for o in plan.plan(filename, recursive=recursive):
            kind = kinds.BY_KIND.get(o.kind)
            if o.status == "skipped":  # as apply: nothing of it exists in edgefed
                _print(f"{o.ref} skipped: {o.reason}")
            elif kind is None or not o.name:
                unknown += 1
                _report_refused(o.label, [p.line() for p in o.problems])
            else:  # identity is enough to delete: a refused field does not matter here
                target = (kind, (o.namespace or "default") if kind.namespaced else None, o.name)
                if target not in targets:
                    targets.append(target)
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
    if unknown:
        raise typer.Exit(1)


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


def format_duration(seconds: float) -> str:
    """A duration in seconds, with its unit (0.3 s, 120 s): a bare number reads as
    anything."""
    return f"{seconds:g} s"


def _condition(
    kind: kinds.Kind, wanted: str
) -> tuple[str, Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], str]]:
    """(canonical name, predicate, what-it-is-now) for `--for=`."""
    if kind is kinds.POD:
        allowed: tuple[str, ...] = _POD_PHASES
        canonical = next((p for p in allowed if p.lower() == wanted.lower()), None)

        def now(o: dict[str, Any]) -> str:
            st = o.get("status") or {}
            if not render.pod_up_to_date(o):
                rev = render.pod_revision(o)
                return f"{st.get('phase', 'Pending')}: updating to revision {rev}"
            reason = st.get("reason") or render._pod_reason(o)
            return f"{st.get('phase', 'Pending')}" + (
                f": {reason}" if reason and reason != "-" else ""
            )

        def ok(o: dict[str, Any]) -> bool:
            # Running means running the current spec: after an update the status is the
            # old revision's until the agent reports the new one.
            return (o.get("status") or {}).get("phase", "Pending") == canonical and (
                canonical != "Running" or render.pod_up_to_date(o))
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
    with _state(ctx).client() as api, _Progress(what) as progress:
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
                progress.update(sum(1 for o in items if ok(o)), len(items))
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
            f"timed out after {format_duration(limit)} waiting for {what} to be "
            f"{canonical}; last error: {last_error}"
        )
    if not items:
        raise FedctlError(
            f"timed out after {format_duration(limit)} waiting for {what} to be "
            f"{canonical}: nothing matched"
        )
    pending = [o for o in sorted(items, key=_sort_key) if not ok(o)]
    shown = ", ".join(f"{o.get('metadata', {}).get('name', '?')} ({now(o)})" for o in pending[:5])
    more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
    raise FedctlError(
        f"timed out after {format_duration(limit)} waiting for {what} to be {canonical}: "
        f"{len(items) - len(pending)}/{len(items)} are; not yet: {shown}{more}"
    )


def debug_enabled() -> bool:
    return os.environ.get("FEDCTL_DEBUG", "") not in ("", "0")


# --- get: fast JSON and watch ----------------------------------------------------------

_FAST_JSON_AFTER = 500


def _json_fast(
    api: ApiClient, kind: kinds.Kind, *, ns: str | None, selector: str | None, node: str | None
) -> bool:
    """`get KIND -o json` of a list longer than one page: items are copied as cloudcore
    sends them, one compact object per line, without parsing (100k nodes in about a
    second). Returns False for short lists, which keep the fully indented output."""
    items, cont = api.list_page(
        kind, namespace=ns, selector=selector, node=node, limit=_FAST_JSON_AFTER
    )
    out = sys.stdout
    if not cont:
        render.write_json(out, render.as_list(sorted(items, key=_sort_key)))
        return True
    out.write('{\n  "apiVersion": "v1",\n  "kind": "List",\n  "items": [\n')
    first = True
    for o in items:
        out.write(("" if first else ",\n") + "    " + json.dumps(o, separators=(",", ":")))
        first = False
    buf = out.buffer if hasattr(out, "buffer") else None
    for line in api.list_lines(kind, namespace=ns, selector=selector, node=node, cont=cont):
        if buf is not None:
            out.flush()
            buf.write(b",\n    " + line)
        else:
            out.write(",\n    " + line.decode())
    out.write("\n  ]\n}\n")
    return True


def _watch(
    ctx: typer.Context,
    kind: kinds.Kind,
    *,
    name: str | None,
    ns: str | None,
    selector: str | None,
    node: str | None,
    output: Output | None,
    limit: float | None,
) -> None:
    """List, then print each change: table rows, `-o json` event lines, or `-o name`."""
    deadline = None if limit is None else time.monotonic() + limit
    console = stdout_console()
    cols = render.columns(kind, wide=output is Output.wide, all_namespaces=ns is None)
    initial: list[dict[str, Any]] = []
    widths: list[int] | None = None
    with _state(ctx).client() as api:
        stream = api.watch(
            kind, namespace=ns, selector=selector, node=node, name=name,
            heartbeat=1.0 if deadline is not None else None,
        )
        for ev in stream:
            etype = ev.get("type")
            obj = ev.get("object") or {}
            if etype == "BOOKMARK":
                if ev.get("initialEventsEnd") and output not in (Output.json, Output.name):
                    widths = render.print_rows(console, cols, initial, header=True)
                    initial = []
            elif output is Output.json:
                sys.stdout.write(json.dumps(ev, separators=(",", ":")) + "\n")
                sys.stdout.flush()
            elif output is Output.name:
                console.print(f"{kind.singular}/{obj.get('metadata', {}).get('name', '?')}")
            elif widths is None:
                initial.append(obj)
            else:
                if etype == "DELETED":
                    obj = {**obj, "status": {**(obj.get("status") or {}), "phase": "Deleted",
                                             "ready": "Deleted"}}
                widths = render.print_rows(console, cols, [obj], header=False, widths=widths)
            if deadline is not None and time.monotonic() >= deadline:
                return


# --- node operations -----------------------------------------------------------------


def _label_args(pairs: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in pairs:
        if p.endswith("-") and "=" not in p:
            out[p[:-1]] = None
        elif "=" in p:
            k, _, v = p.partition("=")
            if not k:
                raise UsageError(f"label {p!r}: empty key")
            out[k] = v
        else:
            raise UsageError(f"label {p!r}: use KEY=VALUE to set or KEY- to remove")
    return out


@app.command()
@_handles_errors
def label(
    ctx: typer.Context,
    *,
    resource: Annotated[str, typer.Argument(metavar="node", help="Only nodes can be labeled.")],
    name: Annotated[str, typer.Argument(metavar="NAME")],
    pairs: Annotated[list[str], typer.Argument(metavar="KEY=VALUE|KEY-...")],
) -> None:
    """Set (k=v) or remove (k-) node labels; they survive what the agent reports."""
    (kind,) = kinds.resolve(resource, allow_group=False)
    if kind is not kinds.NODE:
        raise UsageError("label works on nodes (workload labels live in their manifests)")
    labels = _label_args(pairs)
    with _state(ctx).client() as api:
        api.patch_node(name, labels=labels)
    stdout_console().print(f"node/{name} labeled")


def _cordon(ctx: typer.Context, names: list[str], on: bool) -> None:
    with _state(ctx).client() as api:
        for n in names:
            api.patch_node(n, unschedulable=on)
            stdout_console().print(f"node/{n} {'cordoned' if on else 'uncordoned'}")


@app.command()
@_handles_errors
def cordon(ctx: typer.Context, names: Annotated[list[str], typer.Argument(metavar="NODE...")]
           ) -> None:
    """Mark nodes unschedulable: new pods go elsewhere, running pods stay."""
    _cordon(ctx, names, True)


@app.command()
@_handles_errors
def uncordon(ctx: typer.Context, names: Annotated[list[str], typer.Argument(metavar="NODE...")]
             ) -> None:
    """Mark nodes schedulable again (Pending pods may land on them)."""
    _cordon(ctx, names, False)


@app.command()
@_handles_errors
def drain(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NODE")]) -> None:
    """Cordon a node and move its Deployment and bare pods to other nodes.

    DaemonSet pods stay, and so do pods pinned to the node with spec.nodeName.
    """
    with _state(ctx).client() as api:
        result = api.drain(name)
    console = stdout_console()
    console.print(f"node/{name} cordoned")
    for e in result.get("evicted", []):
        where = f"rescheduled on {e['node']}" if e.get("node") else "Pending (no node fits)"
        console.print(f"pod/{e.get('pod')} evicted, {where}")
    for k in result.get("kept", []):
        console.print(f"pod/{k.get('pod')} kept ({k.get('reason')})")
    console.print(f"node/{name} drained")


@app.command()
@_handles_errors
def events(
    ctx: typer.Context,
    *,
    obj: Annotated[
        str | None,
        typer.Argument(metavar="[OBJECT]", help="name, kind/name or kind/namespace/name."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Newest N events.")] = None,
    warnings: Annotated[bool, typer.Option("--warnings", help="Only Warning events.")] = False,
    output: Annotated[
        Output | None, typer.Option("--output", "-o", help="json or yaml.")
    ] = None,
) -> None:
    """Recent events: scheduling, failures, node readiness, joins, drains."""
    with _state(ctx).client() as api:
        items = api.events(obj=obj, limit=limit, type_="Warning" if warnings else None)
    if output in (Output.json, Output.yaml):
        (render.write_json if output is Output.json else render.write_yaml)(
            sys.stdout, render.as_list(items)
        )
        return
    if not items:
        sys.stderr.write("No events found.\n")
        return
    render.events_table(stdout_console(), items)


# --- wait progress ---------------------------------------------------------------------


class _Progress:
    """A progress bar on stderr while `wait` polls, only when stderr is a terminal."""

    def __init__(self, what: str) -> None:
        self.bar: Any = None
        self.task: Any = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(
                TextColumn(f"waiting for {what}"), BarColumn(), MofNCompleteColumn(),
                console=Console(stderr=True), transient=True,
            )

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task("wait", total=None)
        return self

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=max(total, 1))

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


# --- sub-command groups -------------------------------------------------------------

token_app = typer.Typer(help="Join tokens for new nodes (admin).", no_args_is_help=True)
apitoken_app = typer.Typer(help="API bearer tokens with roles (admin).", no_args_is_help=True)
node_app = typer.Typer(help="Node operations.", no_args_is_help=True)
config_app = typer.Typer(help="Contexts in the fedctl config file.", no_args_is_help=True)
top_app = typer.Typer(help="Resource usage, measured and forecast.", no_args_is_help=True)
rollout_app = typer.Typer(
    help="Follow and steer DaemonSet and Deployment rollouts: status, pause, resume, undo, "
    "retry.",
    no_args_is_help=True,
)
app.add_typer(top_app, name="top")
app.add_typer(rollout_app, name="rollout")
app.add_typer(token_app, name="token")
app.add_typer(apitoken_app, name="apitoken")
app.add_typer(node_app, name="node")
app.add_typer(config_app, name="config")
upgrade_app = typer.Typer(
    help="Upgrade the agents of the fleet's nodes to a release, in health-gated batches "
    "(an AgentUpgrade object).",
    no_args_is_help=True,
)
app.add_typer(upgrade_app, name="upgrade")
brokers_app = typer.Typer(
    help="The broker tier: add brokers, move partitions between them, drain and remove "
    "them (operator). `fedctl get brokers` shows the map.",
    no_args_is_help=True,
)
app.add_typer(brokers_app, name="brokers")
BROKER_NAMES = ("brokers", "broker", "brokermap")


def _when(value: Any) -> str:
    return render.age(value) if value else "-"


def _until(value: Any) -> str:
    if not isinstance(value, int | float):
        return "never"
    left = value - time.time()
    return render.duration(left) if left > 0 else "expired"


@token_app.command("create")
@_handles_errors
def token_create(
    ctx: typer.Context,
    *,
    ttl: Annotated[str, typer.Option("--ttl", metavar="DURATION", help="Lifetime (24h).")] = "24h",
    labels: Annotated[
        str | None,
        typer.Option("--labels", metavar="K=V,...", help="Labels every joining node gets."),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="A note.")] = "",
    uses: Annotated[
        int | None,
        typer.Option("--uses", min=1, metavar="N",
                     help="How many nodes may join with it (cloudcore's default: 1)."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", metavar="NODE", help="Only a node of this name may join with it."),
    ] = None,
) -> None:
    """Issue a join token; prints it once (cloudcore keeps only a hash).

    The token is ID.SECRET.CA-HASH: the last part pins cloudcore's fleet CA, so
    `edgecore join` trusts the cloud it joins without a CA file."""
    lab: dict[str, str] = {}
    for term in filter(None, (labels or "").split(",")):
        k, sep, v = term.partition("=")
        if not sep or not k.strip():
            raise UsageError(f"--labels: {term!r} is not KEY=VALUE")
        lab[k.strip()] = v.strip()
    body: dict[str, Any] = {"ttlSeconds": parse_duration(ttl), "labels": lab,
                            "description": description}
    if uses is not None:
        body["uses"] = uses
    if name is not None:
        body["name"] = name
    with _state(ctx).client() as api:
        rec = api.call("POST", "jointokens", json=body)
    stdout_console().print(str(rec.get("token")))


@token_app.command("list")
@_handles_errors
def token_list(ctx: typer.Context) -> None:
    """Join tokens (ids, expiry, labels, uses), never their secrets."""
    with _state(ctx).client() as api:
        items = api.call("GET", "jointokens").get("items", [])
    render.simple_table(
        stdout_console(),
        ["ID", "EXPIRES IN", "USES", "NAME", "LABELS", "DESCRIPTION"],
        [[str(r.get("id")), _until(r.get("expires")),
          f"{r.get('uses', 0)}/{r['maxUses']}" if r.get("maxUses") else str(r.get("uses", 0)),
          str(r.get("name") or "-"), render.labels_text(r.get("labels")),
          r.get("description") or "-"] for r in items],
    )


@token_app.command("revoke")
@_handles_errors
def token_revoke(ctx: typer.Context, token_id: Annotated[str, typer.Argument(metavar="ID")]
                 ) -> None:
    """Revoke a join token by id (or the whole token)."""
    with _state(ctx).client() as api:
        api.call("DELETE", f"jointokens/{token_id.split('.', 1)[0]}",
                 what=f'join token "{token_id}"')
    stdout_console().print(f"jointoken/{token_id.split('.', 1)[0]} revoked")


@apitoken_app.command("create")
@_handles_errors
def apitoken_create(
    ctx: typer.Context,
    *,
    role: Annotated[str, typer.Option("--role", help="admin, operator or read-only.")],
    name: Annotated[str, typer.Option("--name", help="Who or what uses it.")],
    ttl: Annotated[
        str | None, typer.Option("--ttl", metavar="DURATION", help="Lifetime (default none).")
    ] = None,
) -> None:
    """Issue an API token; prints it once."""
    body: dict[str, Any] = {"role": role, "name": name}
    if ttl:
        body["ttlSeconds"] = parse_duration(ttl)
    with _state(ctx).client() as api:
        rec = api.call("POST", "apitokens", json=body)
    stdout_console().print(str(rec.get("token")))


@apitoken_app.command("list")
@_handles_errors
def apitoken_list(ctx: typer.Context) -> None:
    """API tokens (ids, names, roles), never their secrets."""
    with _state(ctx).client() as api:
        items = api.call("GET", "apitokens").get("items", [])
    render.simple_table(
        stdout_console(),
        ["ID", "NAME", "ROLE", "EXPIRES IN", "AGE"],
        [[str(r.get("id")), str(r.get("name")), str(r.get("role")), _until(r.get("expires")),
          _when(r.get("created"))] for r in items],
    )


@apitoken_app.command("revoke")
@_handles_errors
def apitoken_revoke(ctx: typer.Context, token_id: Annotated[str, typer.Argument(metavar="ID")]
                    ) -> None:
    """Revoke an API token by id."""
    with _state(ctx).client() as api:
        api.call("DELETE", f"apitokens/{token_id.split('.', 1)[0]}",
                 what=f'API token "{token_id}"')
    stdout_console().print(f"apitoken/{token_id.split('.', 1)[0]} revoked")


@app.command()
@_handles_errors
def whoami(ctx: typer.Context) -> None:
    """The name and role cloudcore sees for your token."""
    with _state(ctx).client() as api:
        me = api.call("GET", "whoami")
    auth = "" if me.get("authEnabled") else " (auth is off on this cloudcore)"
    stdout_console().print(f"{me.get('name')} ({me.get('role')}){auth}")


ContainerOpt = Annotated[
    str | None, typer.Option("--container", "-c", help="Container (when the pod has several).")
]


@app.command()
@_handles_errors
def logs(
    ctx: typer.Context,
    *,
    pod: Annotated[str, typer.Argument(metavar="POD")],
    namespace: NamespaceOpt = None,
    container: ContainerOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream new output.")] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", min=0, metavar="N", help="Only the last N lines.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", metavar="DURATION", help="Only output newer than "
                                 "this, e.g. 10m, 1h, 30s.")
    ] = None,
) -> None:
    """Print a pod container's log, fetched from its node."""
    try:
        since_s = parse_duration(since) if since is not None else None
    except UsageError:
        raise UsageError(f"--since: {since!r} is not a duration (use 30s, 10m or 1h)") from None
    out = sys.stdout.buffer
    with _state(ctx).client() as api:
        for chunk in api.logs(pod, namespace=namespace, container=container, tail=tail,
                              since=since_s, follow=follow):
            out.write(chunk)
            out.flush()


@app.command("exec")
@_handles_errors
def exec_(
    ctx: typer.Context,
    *,
    pod: Annotated[str, typer.Argument(metavar="POD")],
    command: Annotated[list[str], typer.Argument(metavar="COMMAND")],
    namespace: NamespaceOpt = None,
    container: ContainerOpt = None,
    timeout: Annotated[
        str, typer.Option("--timeout", metavar="DURATION", help="Kill the command after this.")
    ] = "30s",
) -> None:
    """Run a command in a pod's container; exits with the command's exit code."""
    with _state(ctx).client() as api:
        res = api.exec(pod, list(command), namespace=namespace, container=container,
                       timeout=parse_duration(timeout))
    sys.stdout.write(str(res.get("stdout") or ""))
    sys.stdout.flush()
    sys.stderr.write(str(res.get("stderr") or ""))
    sys.stderr.flush()
    code = res.get("exitCode")
    raise typer.Exit(code if isinstance(code, int) else 1)


@node_app.command("delete")
@_handles_errors
def node_delete(
    ctx: typer.Context, names: Annotated[list[str], typer.Argument(metavar="NAME...")]
) -> None:
    """Remove nodes, their pods' placement and their broker credentials (admin)."""
    with _state(ctx).client() as api:
        for n in names:
            api.delete(kinds.NODE, n)
            stdout_console().print(f"node/{n} deleted")


@config_app.command("set-context")
@_handles_errors
def config_set_context(
    *,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    server: Annotated[str, typer.Option("--server", metavar="URL", help="cloudcore URL.")],
    token: Annotated[str | None, typer.Option("--token", help="Bearer token.")] = None,
    certificate_authority: Annotated[
        str | None,
        typer.Option("--certificate-authority", metavar="FILE",
                     help="PEM CA that signs cloudcore's HTTPS certificate."),
    ] = None,
    insecure_skip_tls_verify: Annotated[
        bool, typer.Option("--insecure-skip-tls-verify",
                           help="Do not verify cloudcore's certificate (unsafe).")
    ] = False,
    use: Annotated[bool, typer.Option("--use", help="Also make it the current context.")] = False,
) -> None:
    """Create or update a context (server, optional token and CA)."""
    path = cfg.config_path()
    data = cfg.load_file(path)
    entry: dict[str, Any] = {"server": cfg.check_server(server)}
    if token:
        entry["token"] = token
    if certificate_authority:
        ca = Path(certificate_authority).expanduser().resolve()
        if not ca.is_file():
            raise UsageError(f"--certificate-authority: CA file {str(ca)!r} does not exist")
        entry["certificate-authority"] = str(ca)
    if insecure_skip_tls_verify:
        entry["insecure-skip-tls-verify"] = True
    data.setdefault("contexts", {})[name] = entry
    if use or not data.get("current-context"):
        data["current-context"] = name
    cfg.save_file(path, data)
    stdout_console().print(f'context "{name}" set in {path}')


@config_app.command("use-context")
@_handles_errors
def config_use_context(name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Make NAME the current context."""
    path = cfg.config_path()
    data = cfg.load_file(path)
    if name not in (data.get("contexts") or {}):
        raise NotFound(f'no context named "{name}" in {path}', status=404)
    data["current-context"] = name
    cfg.save_file(path, data)
    stdout_console().print(f'switched to context "{name}"')


@config_app.command("get-contexts")
@_handles_errors
def config_get_contexts() -> None:
    """The contexts of the config file; * marks the current one."""
    path = cfg.config_path()
    data = cfg.load_file(path)
    current = data.get("current-context")
    rows = [
        ["*" if n == current else "", n, str(c.get("server")), "yes" if c.get("token") else "no",
         "skip-verify" if c.get("insecure-skip-tls-verify")
         else str(c.get("certificate-authority") or "-")]
        for n, c in sorted((data.get("contexts") or {}).items())
    ]
    if not rows:
        sys.stderr.write(f"No contexts in {path}.\n")
        return
    render.simple_table(stdout_console(), ["CURRENT", "NAME", "SERVER", "TOKEN", "CA"], rows)


@config_app.command("current-context")
@_handles_errors
def config_current_context() -> None:
    """Print the current context's name."""
    current = cfg.load_file(cfg.config_path()).get("current-context")
    if not current:
        raise FedctlError("no current context (see 'fedctl config use-context')")
    stdout_console().print(current)


# --- top -------------------------------------------------------------------------------


def _pct(usage: dict[str, Any], key: str) -> float | None:
    v = usage.get(key)
    return round(100.0 * float(v), 1) if isinstance(v, int | float) else None


@top_app.command("nodes")
@_handles_errors
def top_nodes(
    ctx: typer.Context,
    *,
    forecast: Annotated[
        bool, typer.Option("--forecast", help="Add the p50/p90 forecast of the next 15 minutes.")
    ] = False,
    output: Annotated[Output | None, typer.Option("--output", "-o", help="json or yaml.")] = None,
) -> None:
    """CPU and memory use of every node now (percent of allocatable); --forecast adds the
    predicted peaks over the next 15 minutes (p50 and p90)."""
    with _state(ctx).client() as api:
        nodes = api.list(kinds.NODE)
    cols = [("cpu", "CPU"), ("mem", "MEM")]
    if forecast:
        cols += [("cpu_p50", "CPU P50"), ("cpu_p90", "CPU P90"),
                 ("mem_p50", "MEM P50"), ("mem_p90", "MEM P90")]
    rows: list[dict[str, Any]] = []
    for n in sorted(nodes, key=lambda o: str(o.get("metadata", {}).get("name", ""))):
        usage = (n.get("status") or {}).get("usage") or {}
        row: dict[str, Any] = {"name": n.get("metadata", {}).get("name", "?")}
        for key, _ in cols:
            row[key] = _pct(usage, key)
        rows.append(row)
    if output in (Output.json, Output.yaml):
        (render.write_json if output is Output.json else render.write_yaml)(sys.stdout, rows)
        return
    if not rows:
        sys.stderr.write("No nodes found.\n")
        return
    render.simple_table(
        stdout_console(), ["NAME"] + [h for _, h in cols],
        [[str(r["name"])] + ["-" if r[k] is None else f"{r[k]:.0f}%" for k, _ in cols]
         for r in rows],
    )


# --- rollout ---------------------------------------------------------------------------

TargetArg = Annotated[
    str, typer.Argument(metavar="KIND/NAME", help="daemonset/NAME or deployment/NAME (ds/, "
                        "deploy/ too); KIND NAME works too.")
]
NameArg = Annotated[
    str | None,
    typer.Argument(metavar="NAME", show_default=False,
                   help="The workload's name, when the first argument is only its KIND."),
]
_ROLLOUT_KINDS = (kinds.DAEMONSET, kinds.DEPLOYMENT)


def _rollout_target(target: str, name: str | None) -> tuple[kinds.Kind, str]:
    """The workload from `daemonset/NAME` or `deployment NAME` (kubectl's forms)."""
    kind_text, sep, rest = target.partition("/")
    if sep and name is None:
        name = rest
    elif sep or name is None:
        raise UsageError(f"{target!r}: name the workload as KIND/NAME, e.g. daemonset/agent")
    (kind,) = kinds.resolve(kind_text, allow_group=False)
    if kind not in _ROLLOUT_KINDS:
        raise UsageError(f"rollout works on daemonsets and deployments, not {kind.plural}")
    if not name:
        raise UsageError(f"{target!r}: the {kind.kind}'s name is empty")
    return kind, name


def _singular(kind: kinds.Kind) -> str:
    return kind.kind.lower()


def rollout_state(obj: dict[str, Any]) -> tuple[str, str]:
    """Where a workload's rollout stands for `rollout status`: ("done" | "failed" |
    "waiting", what to tell the user). Done: the rollout is Complete and every pod on a
    Ready node is available. A status older than the spec (its observedGeneration is
    below metadata.generation) is waiting, whatever it says."""
    status = obj.get("status")
    if not isinstance(status, dict):
        return "waiting", "cloudcore has reported no status yet"
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if isinstance(generation, int) and (not isinstance(observed, int) or observed < generation):
        return "waiting", f"cloudcore has not observed generation {generation} yet"
    phase = render.rollout_phase(obj)
    progress = render.rollout_progress(obj)
    if phase == "Complete":
        # the template rolled out; done once its pods run (those on nodes that are not
        # Ready cannot say so: they get it when they reconnect)
        desired, _, _, available = render.status_counts(obj)
        offline = (status.get("rollout") or {}).get("offline", 0)
        if available + offline >= desired:
            return "done", progress
        return "waiting", progress
    if phase in ("RolledBack", "Aborted"):
        return "failed", f"{'rolled back' if phase == 'RolledBack' else 'aborted'}: {progress}"
    if phase == "Paused":
        return "waiting", f"paused, {progress}"
    return "waiting", progress


@rollout_app.command("status")
@_handles_errors
def rollout_status(
    ctx: typer.Context,
    *,
    target: TargetArg,
    name: NameArg = None,
    namespace: NamespaceOpt = None,
    timeout: Annotated[
        str | None,
        typer.Option("--timeout", metavar="DURATION",
                     help="Give up after this long (60, 90s, 2m). Default: wait until the "
                     "rollout ends."),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", metavar="SECONDS", help="Polling interval.")
    ] = 0.5,
) -> None:
    """Follow a DaemonSet's or Deployment's rollout until it ends, printing each step.

    Exits 0 once the rollout is complete, 1 with cloudcore's message when it was
    rolled back or aborted, 1 on --timeout. A paused rollout is waited for (resume it
    with `fedctl rollout resume`). A cloudcore that is briefly unreachable is retried.
    """
    kind, ds = _rollout_target(target, name)
    one = _singular(kind)
    ns = namespace or "default"
    limit = parse_duration(timeout) if timeout is not None else None
    if interval <= 0:
        raise UsageError("--interval: must be a positive number of seconds")
    what = f'{one} "{ds}" rollout'
    resume = f"fedctl rollout resume {one}/{ds}" + ("" if ns == "default" else f" -n {ns}")
    deadline = None if limit is None else time.monotonic() + limit
    console = stdout_console()
    said: str | None = None
    with _state(ctx).client() as api:
        while True:
            try:
                state, text = rollout_state(api.get(kind, ds, namespace=ns))
            except Unreachable as exc:
                state, text = "waiting", f"cloudcore unreachable: {exc.message}"
            if state == "done":
                console.print(f'{one} "{ds}" successfully rolled out', markup=False)
                return
            if state == "failed":
                raise FedctlError(f"{what} {text} (see: fedctl events {one}/{ns}/{ds})")
            if text != said:
                paused = f" (resume with: {resume})" if text.startswith("paused") else ""
                console.print(f"Waiting for {what}: {text}{paused}", markup=False)
                said = text
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise FedctlError(f"timed out after {format_duration(limit or 0.0)} "
                                 f"waiting for {what}: {text}")
            time.sleep(interval if remaining is None else min(interval, remaining))


def _rollout_action(ctx: typer.Context, *, target: str, name: str | None,
                    namespace: str | None, action: str,
                    says: Callable[[dict[str, Any]], str]) -> None:
    """POST the action and print `kind/name` and what `says` of the object after it."""
    kind, obj_name = _rollout_target(target, name)
    with _state(ctx).client() as api:
        obj = api.rollout(kind, obj_name, action, namespace=namespace or "default")
    stdout_console().print(f"{_singular(kind)}/{obj_name} {says(obj)}", markup=False)


def _rolled_back_to(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    revision = status.get("currentRevision") or status.get("updateRevision")
    return "rolled back" + (f" to revision {revision}" if revision else "")


@rollout_app.command("pause")
@_handles_errors
def rollout_pause(ctx: typer.Context, target: TargetArg, name: NameArg = None,
                  namespace: NamespaceOpt = None) -> None:
    """Stop new batches of a rollout (pods already updating go on)."""
    _rollout_action(ctx, target=target, name=name, namespace=namespace, action="pause",
                    says=lambda _: "paused")


@rollout_app.command("resume")
@_handles_errors
def rollout_resume(ctx: typer.Context, target: TargetArg, name: NameArg = None,
                   namespace: NamespaceOpt = None) -> None:
    """Let a paused rollout go on with its next batch."""
    _rollout_action(ctx, target=target, name=name, namespace=namespace, action="resume",
                    says=lambda _: "resumed")


@rollout_app.command("undo")
@_handles_errors
def rollout_undo(ctx: typer.Context, target: TargetArg, name: NameArg = None,
                 namespace: NamespaceOpt = None) -> None:
    """Put back the template that last rolled out everywhere, on every pod at once."""
    _rollout_action(ctx, target=target, name=name, namespace=namespace, action="undo",
                    says=_rolled_back_to)


@rollout_app.command("retry")
@_handles_errors
def rollout_retry(ctx: typer.Context, target: TargetArg, name: NameArg = None,
                  namespace: NamespaceOpt = None) -> None:
    """Start an aborted or rolled-back rollout of the current template again."""
    _rollout_action(ctx, target=target, name=name, namespace=namespace, action="retry",
                    says=lambda _: "rollout restarted")


# --- upgrade ----------------------------------------------------------------------


@upgrade_app.command("nodes")
@_handles_errors
def upgrade_nodes(
    ctx: typer.Context,
    *,
    version: Annotated[str, typer.Option("--version", metavar="V",
                                         help="The release's version (what nodes report "
                                              "as their agent version once upgraded).")],
    image: Annotated[str, typer.Option("--image", metavar="REF",
                                       help="The release image, as `python -m cloudcore "
                                            "release publish --image` pushed it.")],
    selector: Annotated[str | None, typer.Option(
        "--selector", "-l", metavar="KEY=VALUE[,...]",
        help="Only the nodes with these labels (default: every node).")] = None,
    max_unavailable: Annotated[str, typer.Option(
        "--max-unavailable", metavar="N|P%",
        help="Nodes upgrading at once (a number, or a percentage of the selected).")] = "1",
    failure_threshold: Annotated[str, typer.Option(
        "--failure-threshold", metavar="N|P%",
        help="Failed nodes tolerated; one more aborts and sends upgraded nodes back.")] = "0",
    deadline: Annotated[str, typer.Option(
        "--deadline", metavar="DURATION",
        help="How long a node's new agent has to prove healthy (120s, 5m).")] = "120s",
    name: Annotated[str | None, typer.Option(
        "--name", help="The AgentUpgrade's name (default agent-VERSION).")] = None,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate only.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Then follow it: exit 0 when Complete, 1 when Aborted.")] = False,
    timeout: Annotated[str | None, typer.Option(
        "--timeout", metavar="DURATION", help="With --wait: give up after this long.")] = None,
) -> None:
    """Create or update the AgentUpgrade agent-VERSION: the selected nodes' agents move
    to the release in batches; one that fails past the threshold aborts it and the nodes
    it upgraded go back. Follow it with `fedctl get agentupgrades`, or `--wait`."""
    from fedctl import upgrade

    limit = parse_duration(timeout) if timeout else None
    seconds = parse_duration(deadline)
    if seconds != int(seconds) or not 1 <= seconds <= 86_400:
        raise UsageError(f"--deadline {deadline!r}: whole seconds from 1s to 24h")
    doc = upgrade.document(
        name=name or upgrade.upgrade_name(version), version=version, image=image,
        selector=upgrade.match_labels(selector),
        max_unavailable=upgrade.count("--max-unavailable", max_unavailable, low=1),
        failure_threshold=upgrade.count("--failure-threshold", failure_threshold, low=0),
        deadline=int(seconds), paused=paused)
    target = doc["metadata"]["name"]
    with _state(ctx).client() as api:
        (result,) = api.apply([doc], dry_run=dry_run)
        live = None if dry_run else api.get(kinds.BY_KIND["AgentUpgrade"], target)
    _print(f"agentupgrade/{target} {result.get('action', 'applied')}"
           + (" (dry run)" if dry_run else ""))
    status = (live or {}).get("status") or {}
    if status.get("phase") == "Aborted":
        sys.stderr.write(f"warning: agentupgrade/{target} was aborted ({status.get('message')})"
                         f"; it starts no new batches: delete it (fedctl delete agentupgrade "
                         f"{target}) or pass another --name to try again\n")
    elif wait and not dry_run:
        _follow_upgrade(ctx, target, limit)
    elif status:
        _print(f"{status.get('message') or status.get('phase')}; follow it with: "
               f"fedctl get agentupgrades")


def _follow_upgrade(ctx: typer.Context, name: str, limit: float | None) -> None:
    """Print an AgentUpgrade's progress as it changes until it is Complete (return) or
    Aborted (exit 1); a cloudcore that does not answer is retried until `limit`."""
    kind = kinds.BY_KIND["AgentUpgrade"]
    start, last, message = time.monotonic(), None, "no status yet"
    with _state(ctx).client() as api:
        while True:
            try:
                obj = api.get(kind, name)
            except Unreachable:
                obj = None
            if obj is not None:
                status = obj.get("status") or {}
                generation = (obj.get("metadata") or {}).get("generation")
                fresh = not isinstance(generation, int) or (
                    status.get("observedGeneration") or 0) >= generation
                phase = status.get("phase")
                message = str(status.get("message") or phase or message)
                if fresh and phase == "Aborted":
                    raise FedctlError(f"agentupgrade/{name} aborted: {message} (see: fedctl "
                                      f"describe agentupgrade {name})")
                if fresh and phase == "Complete":
                    _print(f"agentupgrade/{name} complete: {message}")
                    return
                if (phase, message) != last:
                    _print(f"Waiting for agentupgrade/{name}: {phase}: {message}")
                    last = (phase, message)
            if limit is not None and time.monotonic() - start > limit:
                raise FedctlError(f"timed out after {format_duration(limit)} waiting for "
                                  f"agentupgrade/{name}: {message}")
            time.sleep(0.5)


# --- brokers (proposal 0007) -----------------------------------------------------------


def _show_brokers(view: dict[str, Any], output: Output | None) -> None:
    """The map as a table (one row per broker), or as JSON/YAML with -o."""
    if output in (Output.json, Output.yaml):
        writer = render.write_json if output is Output.json else render.write_yaml
        writer(sys.stdout, view)
        return
    brokers = view.get("brokers") or {}
    rows = [[str(name), str(b.get("state", "?")), ",".join(b.get("urls") or []),
             str(b.get("homeOf", "?")), str(b.get("sessions", 0)),
             "yes" if b.get("connected") else "no"]
            for name, b in sorted(brokers.items())]
    console = stdout_console()
    render.simple_table(console, ["NAME", "STATE", "URL", "PARTITIONS", "SESSIONS",
                                  "CONNECTED"], rows)
    console.file.write(f"broker map version {view.get('version', '?')}\n")


def _broker_name(name: str, what: str = "NAME") -> str:
    """A broker name checked before any call: it goes into the request's path, where
    '../..' would reach another route (`brokers remove ../../nodes/x` deleted a node)."""
    from shared.brokermap import valid_name

    if not valid_name(name):
        raise UsageError(f"{what} {name!r}: a broker name is a DNS label (lower-case "
                         "letters, digits and '-', at most 63 characters)")
    return name


def _partitions(text: str) -> list[int]:
    from shared.brokermap import parse_partitions
    from shared.errors import ObjectError

    try:
        return parse_partitions(text)
    except ObjectError as exc:
        raise UsageError(f"--partitions {text!r}: {exc.message}") from None


@brokers_app.command("add")
@_handles_errors
def brokers_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="A DNS label, e.g. mq-3.")],
    url: Annotated[str, typer.Argument(metavar="URL", help="mqtts://host:port")],
) -> None:
    """Add a broker (active, home of no partition yet); cloudcore connects to it.
    Start it first with the password file, ACL and TLS files cloudcore writes."""
    _broker_name(name)
    with _state(ctx).client() as api:
        view = api.call("POST", "brokermap/brokers", json={"name": name, "url": url})
    _print(f"broker/{name} added (map version {view.get('version')}); move partitions to "
           f"it with: fedctl brokers move --partitions 0-15 --to {name}")


@brokers_app.command("move")
@_handles_errors
def brokers_move(
    ctx: typer.Context,
    *,
    partitions: Annotated[str, typer.Option("--partitions", metavar="LIST",
                                            help="e.g. 0-15,20 (0-255; 0x10 for hex).")],
    to: Annotated[str, typer.Option("--to", metavar="NAME", help="The new home broker.")],
) -> None:
    """Make NAME the home of these partitions (the old home stays their first fallback);
    their nodes are told and move within a minute."""
    ps = _partitions(partitions)
    _broker_name(to, "--to")
    with _state(ctx).client() as api:
        view = api.call("POST", "brokermap/move", json={"partitions": ps, "to": to},
                        what=f"broker {to!r}")
    _print(f"{len(ps)} partition(s) now at broker/{to} (map version {view.get('version')})")


@brokers_app.command("drain")
@_handles_errors
def brokers_drain(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
) -> None:
    """Move every partition of NAME home to the least loaded active brokers; NAME stays
    their last fallback. Remove it once `fedctl get brokers` shows no sessions there."""
    _broker_name(name)
    with _state(ctx).client() as api:
        view = api.call("POST", f"brokermap/brokers/{name}/drain", what=f"broker {name!r}")
    _print(f"broker/{name} draining (map version {view.get('version')})")


@brokers_app.command("remove")
@_handles_errors
def brokers_remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    force: Annotated[bool, typer.Option("--force", help="Remove it even while nodes were "
                                        "last heard there (they are cut off until their "
                                        "next retry of their home broker).")] = False,
) -> None:
    """Take NAME out of the map (refused while it is home of any partition, and while
    nodes were last heard there unless --force)."""
    _broker_name(name)
    with _state(ctx).client() as api:
        view = api.call("DELETE", f"brokermap/brokers/{name}"
                        + ("?force=true" if force else ""), what=f"broker {name!r}")
    _print(f"broker/{name} removed (map version {view.get('version')})")
