"""Reading manifests: files, directories or stdin, each holding YAML documents.

Every document is validated with `shared.models.parse_object` before it is sent, so
a bad field is named with its file and document number. `read` gives the raw
documents to `fedctl.plan`, which judges each on its own (kubectl-style apply);
`load` is all or nothing. What is sent is the validated model's dump: plain JSON even
when the YAML held dates or other types JSON cannot carry.

What `fedctl get -o yaml|json` prints can be applied back: a `kind: List` document
is expanded into its items, and `status` and the server-managed metadata (uid,
generation, creationTimestamp, resourceVersion) are accepted and ignored. Any other
unknown field is still an error naming the field.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from fedctl.errors import ManifestError
from fedctl.kinds import BY_KIND, Kind
from shared.errors import ObjectError
from shared.kinds import REDACTED
from shared.models import Node, Secret, expand_lists, parse_object, without_server_fields

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Document:
    source: str  # "web.yaml#2": file and 1-based document number, for messages
    kind: Kind
    namespace: str | None  # None for cluster-scoped kinds (Node)
    name: str
    body: dict[str, Any]  # validated, JSON-able, camelCase

    @property
    def ref(self) -> str:
        """`daemonset/web`, the way results are printed."""
        return f"{self.kind.singular}/{self.name}"


def _files(path: str, *, recursive: bool) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        pattern = "**/*" if recursive else "*"
        found = sorted(f for f in p.glob(pattern) if f.is_file() and f.suffix in SUFFIXES)
        if not found:
            raise ManifestError(f"{path}: no {', '.join(SUFFIXES)} files in this directory")
        return found
    if not p.exists():
        raise ManifestError(f"{path}: no such file or directory")
    return [p]


def _parse_stream(text: str, source: str) -> list[tuple[str, Any]]:
    try:
        raw = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{source}: not valid YAML{where}: {problem}") from None
    # Empty documents (a trailing `---`, a comment-only file) are skipped, as kubectl does;
    # a `kind: List` (what `get` prints for several objects) stands for its items.
    out: list[tuple[str, Any]] = []
    for i, doc in enumerate(raw, start=1):
        if doc is None:
            continue
        items = expand_lists(doc)
        if items == [doc]:
            out.append((f"{source}#{i}", doc))
        else:
            out += [(f"{source}#{i}.items[{j}]", item) for j, item in enumerate(items)]
    return out


def _check_redacted(doc: dict[str, Any], label: str) -> None:
    """Lists show Secret values as REDACTED; applying that would overwrite the secret."""
    if doc.get("kind") != "Secret":
        return
    for f in ("data", "stringData"):
        values = doc.get(f)
        if isinstance(values, dict):
            for k, v in values.items():
                if v == REDACTED:
                    raise ManifestError(
                        f"{label}: {f}.{k} is {REDACTED} (lists hide secret values); "
                        f"get the secret by name to apply it", field=f"{f}.{k}")


def validate(doc: Any, source: str) -> Document:
    """One document -> a `Document`, or a ManifestError naming the file, document and field."""
    label = source
    if isinstance(doc, dict):
        name = (
            (doc.get("metadata") or {}).get("name")
            if isinstance(doc.get("metadata"), dict)
            else None
        )
        if doc.get("kind") and name:
            label = f"{source} ({doc['kind']}/{name})"
    if isinstance(doc, dict):
        _check_redacted(doc, label)
    try:
        model = parse_object(without_server_fields(doc))
    except ObjectError as exc:
        raise ManifestError(f"{label}: {exc.message}", field=exc.field) from None
    body = model.dump()
    kind = BY_KIND[body["kind"]]
    meta = body.get("metadata", {})
    namespace = meta.get("namespace", "default") if kind.namespaced else None
    return Document(source=source, kind=kind, namespace=namespace, name=meta["name"], body=body)


def read(
    paths: list[str], *, recursive: bool = False, stdin: TextIO | None = None
) -> list[tuple[str, Any | ManifestError]]:
    """Every raw document of every path (`-` is stdin), in order, with its source
    ("web.yaml#2"); not validated. A path or file that cannot be read, or is not valid
    YAML, stands as its ManifestError in the list (source: the path), and the other
    paths are still read: `fedctl apply` reports it and goes on with the rest."""
    out: list[tuple[str, Any | ManifestError]] = []
    for path in paths:
        if path == "-":
            stream = stdin if stdin is not None else sys.stdin
            texts = [("<stdin>", stream.read())]
        else:
            texts = []
            try:
                files = _files(path, recursive=recursive)
            except ManifestError as exc:
                out.append((path, exc))
                continue
            for f in files:
                try:
                    texts.append((str(f), f.read_text()))
                except (OSError, UnicodeDecodeError) as exc:
                    out.append((str(f), ManifestError(f"{f}: cannot read: {exc}")))
        for source, text in texts:
            try:
                out += _parse_stream(text, source)
            except ManifestError as exc:
                out.append((source, exc))
    return out


def load(
    paths: list[str], *, recursive: bool = False, stdin: TextIO | None = None
) -> list[Document]:
    """All documents of all paths (`-` is stdin), validated, in the order given.

    Raises ManifestError on the first problem; an empty result is an error too,
    since applying nothing is almost always a wrong path.
    """
    docs: list[Document] = []
    for src, doc in read(paths, recursive=recursive, stdin=stdin):
        if isinstance(doc, ManifestError):
            raise doc
        docs.append(validate(doc, src))
    if not docs:
        raise ManifestError(f"no objects found in {', '.join(paths)}")
    seen: dict[tuple[str, str | None, str], str] = {}
    for d in docs:
        k = (d.kind.kind, d.namespace, d.name)
        if k in seen:
            raise ManifestError(
                f"{d.source}: {d.ref} is also defined in {seen[k]}", field="metadata.name"
            )
        seen[k] = d.source
    return docs


SYSTEM_PREFIX = "edgefed.io/"
"""Annotations under this prefix are set by cloudcore, not by the user."""


def _owned_node_labels(live: dict[str, Any]) -> dict[str, str]:
    raw = ((live.get("metadata") or {}).get("annotations") or {}).get(
        f"{SYSTEM_PREFIX}applied-labels")
    try:
        applied = json.loads(raw) if raw else {}
    except ValueError:
        applied = {}
    return applied if isinstance(applied, dict) else {}


def comparable(body: dict[str, Any], *, live: dict[str, Any] | None = None) -> dict[str, Any]:
    """The user-owned part of an object (what `apply` compares), for a dry-run diff:
    no status, server metadata or `edgefed.io/` annotations, Secret
    values hashed (a diff must not print them). With `live` (the object as the server
    holds it), a Node keeps only the labels `apply` owns, as the server judges them."""
    model = parse_object(without_server_fields(body))
    if isinstance(model, Secret):
        model = model.normalised()
    # Defaults included: both sides go through the same model, so they only show
    # where a default is what changed (replicas 1 -> 3).
    out: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    out.pop("status", None)
    meta = out.get("metadata") or {}
    ann = {k: v for k, v in (meta.pop("annotations", None) or {}).items()
           if not k.startswith(SYSTEM_PREFIX)}
    if ann:
        meta["annotations"] = ann
    if isinstance(model, Node) and live is not None:
        owned = _owned_node_labels(live)
        live_labels = (live.get("metadata") or {}).get("labels") or {}
        labels = {k: v for k, v in (meta.get("labels") or {}).items()
                  if k in owned or live_labels.get(k) != v}
        meta.pop("labels", None)
        if labels:
            meta["labels"] = labels
    if isinstance(model, Secret) and out.get("data"):
        out["data"] = {k: "<sha256:" + hashlib.sha256(v.encode()).hexdigest()[:12] + ">"
                       for k, v in out["data"].items()}
    return out
