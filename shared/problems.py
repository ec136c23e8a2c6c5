"""Every problem of one Kubernetes-style document, not only the first: the judge that
fedctl's apply planning (`fedctl.plan`) and cloudcore's API (a 422 listing every
violation of a document) share, so both sides report the same fields the same way.

Why every problem: the schema (shared.models / shared.pods) stops at the first bad
field. Fixing a real manifest one field per round took kube-prometheus' node-exporter
15 rounds. So a refused document is checked again with that field taken out (or, where
taking it out would leave a broken parent such as a volume with no source, replaced by
a neutral stand-in) until it passes or nothing more can be learned; the fields found
are the document's problems. Nothing of that trimmed copy is ever kept or sent.

Each problem has its dotted field path, the reason, and where edgefed supports
something close, the alternative (`hint`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from shared.errors import ObjectError, UnsupportedField
from shared.kinds import API_VERSIONS
from shared.models import parse_object, without_server_fields

ISSUE_18 = "issue 18"
"""Where the fields that are planned but not yet supported are tracked."""

MAX_PROBLEMS = 64
"""A document with more problems than this is reported with the first ones."""


@dataclass(frozen=True)
class Problem:
    """One reason a document is refused."""

    field: str | None
    """Dotted path of the field (`spec.template.spec.hostPID`), None for the document."""
    reason: str
    """Why, without the path: "not supported by edgefed", "must be within 1..65535"."""
    alternative: str = ""
    """What to write instead, where edgefed supports something close; else empty."""
    planned: bool = False
    """True where issue 18 (part 1) plans to support the field as Kubernetes does."""

    def line(self) -> str:
        """`field: reason; instead: alternative (planned: issue 18)`."""
        out = f"{self.field}: {self.reason}" if self.field else self.reason
        if self.alternative:
            out += f"; instead: {self.alternative}"
        if self.planned:
            out += f" (planned: {ISSUE_18})"
        return out



# -- the supported alternative of a refused field ----------------------------------------

_HINTS: tuple[tuple[re.Pattern[str], str, bool], ...] = tuple(
    (re.compile(p), alt, planned) for p, alt, planned in (
        (r"\.env\[\d+\]\.valueFrom$", "`value`, or mount the ConfigMap or Secret as a "
         "configMap/secret volume", True),
        (r"\.envFrom$", "mount the ConfigMap or Secret as a configMap/secret volume", True),
        (r"\.initContainers$", "run the steps before the main process in one container "
         "(`sh -c 'step && exec main'`)", True),
        (r"\.nodeAffinity\.requiredDuringSchedulingIgnoredDuringExecution$",
         "a mapping: {nodeSelectorTerms: [{matchExpressions: [{key, operator, values}]}]} "
         "(weight and preference belong in preferredDuringSchedulingIgnoredDuringExecution)",
         False),
        (r"\.(serviceAccountName|automountServiceAccountToken)$",
         "leave it out: no API token is mounted at the edge", True),
        (r"\.serviceAccount$", "serviceAccountName (serviceAccount is its deprecated alias)",
         False),
        (r"\.imagePullSecrets$", "", True),
        (r"\.(hostPID|hostIPC)$", "", True),
        (r"\.(dnsPolicy|dnsConfig)$", "leave it out: pods use the node's resolver", True),
        (r"\.priorityClassName$", "", True),
        (r"\.updateStrategy\.rollingUpdate\.maxSurge$", "rollingUpdate.maxUnavailable "
         "(how many nodes have their pod replaced at a time); a Deployment takes maxSurge",
         False),
        (r"\.volumeMounts\[\d+\]\.mountPropagation$", "", True),
        (r"\.securityContext\.(seLinuxOptions|seLinuxChangePolicy|appArmorProfile|windowsOptions)$",
         "seccompProfile, capabilities and allowPrivilegeEscalation confine a container "
         "(docs/pods.md)", False),
        (r"\.topologySpreadConstraints$", "podAntiAffinity with topologyKey "
         "kubernetes.io/hostname (or any node label) spreads replicas", False),
        (r"\.volumeMounts\[\d+\]\.(subPath|subPathExpr)$", "mount the volume at a "
         "directory; a configMap/secret volume's `items` choose the file names", False),
        (r"\.volumes\[\d+\]\.persistentVolumeClaim$", "a hostPath (type: "
         "DirectoryOrCreate) or emptyDir volume", False),
        (r"\.volumes\[\d+\]\.(projected|downwardAPI)$", "configMap and secret volumes",
         False),
        (r"\.volumes\[\d+\]\.[A-Za-z]+$", "hostPath, emptyDir, configMap or secret", False),
        (r"\.(lifecycle)$", "", False),
        (r"\.(terminationMessagePath|terminationMessagePolicy)$",
         "leave it out: `fedctl logs` shows the container's output", False),
        (r"\.revisionHistoryLimit$", "leave it out: edgefed keeps the last template that "
         "rolled out (`fedctl rollout undo`)", False),
        (r"\.selector\.matchExpressions$", "selector.matchLabels", False),
        (r"\.(strategy|updateStrategy)\.type$", "RollingUpdate; rollingUpdate."
         "maxUnavailable: 100% replaces every pod at once", False),
        (r"\.ports\[\d+\]\.hostIP$", "leave it out: a hostPort listens on every address "
         "of the node", False),
        (r"\.(stdin|stdinOnce|tty)$", "`fedctl exec POD -- COMMAND` runs a command in "
         "the pod", False),
    ))


def hint(path: str) -> tuple[str, bool]:
    """(supported alternative or "", planned in issue 18) for a refused field path."""
    for pattern, alt, planned in _HINTS:
        if pattern.search("." + path):
            return alt, planned
    return "", False



# -- collecting every problem of a document ------------------------------------------------

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_VOLUME = re.compile(r"(^|\.)volumes\[\d+\]$")
_PROBE = re.compile(r"(^|\.)(livenessProbe|readinessProbe|startupProbe)$")


def _parts(path: str) -> list[str | int]:
    return [m.group(1) if m.group(1) is not None else int(m.group(2))
            for m in _PART.finditer(path)]


def _parent(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def _locate(doc: Any, path: str) -> tuple[dict[str, Any], str] | None:
    """(mapping, key) holding the field at `path` in `doc`, or None if it is not there."""
    parts = _parts(path)
    if not parts:
        return None
    node = doc
    for p in parts[:-1]:
        if isinstance(p, int):
            if not isinstance(node, list) or p >= len(node):
                return None
        elif not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    last = parts[-1]
    if isinstance(last, int) or not isinstance(node, dict) or last not in node:
        return None
    return node, last


def _take_out(doc: Any, path: str, *, stand_in: bool) -> bool:
    """Remove the field at `path` from `doc` (in place); True if it was there.

    With `stand_in`, a volume's unsupported source becomes `emptyDir: {}` and a probe's
    unsupported handler `exec`, so the volume or probe stays whole and the rest of the
    document can still be checked (a volume without a source fails its own rule)."""
    found = _locate(doc, path)
    if found is None:
        return False
    node, key = found
    del node[key]
    parent = _parent(path)
    if stand_in and _VOLUME.search(parent) and key != "name":
        node["emptyDir"] = {}
    elif stand_in and _PROBE.search(parent):
        node["exec"] = {"command": ["true"]}
    return True


_WITHIN = re.compile(r"must be within (-?\d+)\.\.")
_AT_LEAST = re.compile(r"must be >= (-?\d+)")
_ONE_OF = re.compile(r"must be one of '([^']*)'")
_NEUTRAL: tuple[tuple[str, Any], ...] = (
    ("must be a string", "x"), ("must be an integer", 1), ("must be a number", 1),
    ("must be true or false", False), ("must be a list", []), ("must be a mapping", {}),
    ("DNS-1123", "x"))


def _neutral(reason: str) -> Any:
    """A value that passes the rule `reason` states, to stand in for a bad value the
    schema requires (taking it out would only say "field required"); None if unknown."""
    for pattern in (_WITHIN, _AT_LEAST, _ONE_OF):
        m = pattern.search(reason)
        if m:
            return m.group(1) if pattern is _ONE_OF else int(m.group(1))
    return next((v for text, v in _NEUTRAL if text in reason), None)


def _set_aside(doc: Any, path: str, reason: str) -> bool:
    """Put a bad value out of the way: replaced by a neutral value where one is known
    (so a required field stays), else taken out. True if it was there."""
    value = _neutral(reason)
    found = _locate(doc, path)
    if value is None or found is None:
        return _take_out(doc, path, stand_in=False)
    node, key = found
    node[key] = copy.deepcopy(value)
    return True


def _reason(exc: ObjectError, kind: str) -> str:
    """The error's message without its `Kind: ` and `field: ` prefixes."""
    msg = exc.message.removeprefix(f"{kind}: ")
    if exc.field:
        msg = msg.removeprefix(f"{exc.field}: ")
    return msg


def _paths(value: Any, path: str, out: dict[str, int]) -> dict[str, int]:
    """Every field path of `value`, numbered in the order it is written."""
    if path:
        out.setdefault(path, len(out))
    if isinstance(value, dict):
        for k, v in value.items():
            _paths(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _paths(v, f"{path}[{i}]", out)
    return out


def _in_order(found: list[Problem], doc: dict[str, Any]) -> list[Problem]:
    """Problems in the order their fields are written (the schema's checks run in its own
    order); a field that is not there (missing) sorts by its nearest written parent."""
    order = _paths(doc, "", {})

    def key(p: Problem) -> int:
        path = p.field or ""
        while path and path not in order:
            path = _parent(path)
        return order.get(path, -1)

    return sorted(found, key=key)


_MEANT = re.compile(r" \(did you mean '([^']+)'\?\)$")


def problems_of(doc: dict[str, Any]) -> list[Problem]:
    """Every problem of one document of a served kind (empty: it validates), in the
    order their fields are written."""
    kind = str(doc.get("kind"))
    work = copy.deepcopy(without_server_fields(doc))
    found: list[Problem] = []
    taken: list[str] = []
    meant: set[str] = set()  # `parent.image` for a misspelt `imag` already reported
    while len(found) < MAX_PROBLEMS:
        try:
            parse_object(work)
            break
        except UnsupportedField as exc:
            f = exc.field
            reason = "not supported by edgefed" + exc.hint
            unsupported = True
            m = _MEANT.search(exc.hint)
            if f and m:
                parent = _parent(f)
                meant.add(f"{parent}.{m.group(1)}" if parent else m.group(1))
        except ObjectError as exc:
            f = exc.field
            reason = _reason(exc, kind)
            unsupported = False
        if f is not None and (f in meant or any(
                t == f or t.startswith((f + ".", f + "[")) for t in taken)):
            # The parent of a field already taken out complains about it, or the right
            # name of a misspelt field is missing: a consequence of what is reported
            # already, not a problem of its own. Nothing more to learn.
            break
        alt, planned = hint(f) if f else ("", False)
        if f == "apiVersion":
            alt = f"apiVersion: {API_VERSIONS.get(kind, '?')}"
        found.append(Problem(field=f, reason=reason, alternative=alt, planned=planned))
        if f is None:
            break
        moved = (_take_out(work, f, stand_in=True) if unsupported
                 else _set_aside(work, f, reason))
        if not moved:
            break
        taken.append(f)
    return _in_order(found, doc)


__all__ = ["ISSUE_18", "MAX_PROBLEMS", "Problem", "hint", "problems_of"]
