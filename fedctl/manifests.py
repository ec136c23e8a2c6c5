"""Reading manifests: files, directories or stdin, each holding YAML documents.

Every document is validated with `shared.models.parse_object` before anything is
sent, so a bad field is named with its file and document number and nothing is
half-applied. What is sent is the validated model's dump: plain JSON even when the
YAML held dates or other types JSON cannot carry.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from fedctl.errors import ManifestError
from fedctl.kinds import BY_KIND, Kind
from shared.errors import ObjectError
from shared.models import parse_object

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
    # Empty documents (a trailing `---`, a comment-only file) are skipped, as kubectl does.
    return [(f"{source}#{i}", doc) for i, doc in enumerate(raw, start=1) if doc is not None]


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
    try:
        model = parse_object(doc)
    except ObjectError as exc:
        raise ManifestError(f"{label}: {exc.message}", field=exc.field) from None
    body = model.dump()
    kind = BY_KIND[body["kind"]]
    meta = body.get("metadata", {})
    namespace = meta.get("namespace", "default") if kind.namespaced else None
    return Document(source=source, kind=kind, namespace=namespace, name=meta["name"], body=body)


def load(
    paths: list[str], *, recursive: bool = False, stdin: TextIO | None = None
) -> list[Document]:
    """All documents of all paths (`-` is stdin), validated, in the order given.

    Raises ManifestError on the first problem; an empty result is an error too,
    since applying nothing is almost always a wrong path.
    """
    docs: list[Document] = []
    for path in paths:
        if path == "-":
            stream = stdin if stdin is not None else sys.stdin
            texts = [("<stdin>", stream.read())]
        else:
            texts = []
            for f in _files(path, recursive=recursive):
                try:
                    texts.append((str(f), f.read_text()))
                except (OSError, UnicodeDecodeError) as exc:
                    raise ManifestError(f"{f}: cannot read: {exc}") from None
        for source, text in texts:
            for src, doc in _parse_stream(text, source):
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
