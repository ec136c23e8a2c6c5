"""Apply planning, kubectl-style: every document of the given files judged on its own.

`plan(paths)` reads the files (`fedctl.manifests.read`) and gives one `Outcome` per
document, in order, without asking cloudcore:

- `apply`: the document validated; `Outcome.document` is what `apply` sends.
- `skipped`: a Kubernetes kind edgefed does not serve and whose absence does not
  stop a workload from running (Service, Ingress, ServiceAccount, RBAC, storage
  claims...): one line with the reason, and the rest of the file goes on.
- `refused`: the document cannot be applied. Every problem of the document is listed
  (not only the first): each with its field path, why, and where one exists the
  supported alternative; `Problem.planned` marks what issue 18 (part 1) is to support.

Why every problem: the schema (shared.models / shared.pods) stops at the first bad
field. Fixing a real manifest one field per round took kube-prometheus' node-exporter
15 rounds. So a refused document is checked again with that field taken out (or, where
taking it out would leave a broken parent such as a volume with no source, replaced by
a neutral stand-in) until it passes or nothing more can be learned; the fields found
are the document's problems. Nothing of that trimmed copy is ever sent.

A workload kind edgefed does not run (StatefulSet, Job, CronJob, ReplicaSet) and any
kind it does not know (custom resources included) are refused, not skipped: the
document is the thing the user wants running, and "skipped" would read as success.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from fedctl import manifests
from fedctl.errors import ManifestError
from fedctl.kinds import BY_KIND
from shared.errors import ObjectError, UnsupportedField
from shared.kinds import REDACTED
from shared.models import API_VERSIONS, parse_object, without_server_fields

ISSUE_18 = "issue 18"
"""Where the fields that are planned but not yet supported are tracked."""

SERVICES_PROPOSAL = "docs/proposals/0005-edge-services.md"

MAX_PROBLEMS = 64
"""A document with more problems than this is reported with the first ones."""

Status = Literal["apply", "skipped", "refused"]


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


@dataclass(frozen=True)
class Outcome:
    """What `apply` does with one document."""

    source: str
    """File and 1-based document number, "web.yaml#2" (a file alone for a file error)."""
    kind: str
    """The document's kind as written ("" when it has none)."""
    name: str
    """metadata.name as written ("" when it has none)."""
    status: Status
    document: manifests.Document | None = None
    """The validated document, for `apply` only."""
    reason: str = ""
    """Why it is skipped (one line)."""
    problems: tuple[Problem, ...] = field(default=())
    """Why it is refused (at least one)."""
    namespace: str = ""
    """metadata.namespace as written ("" when it has none)."""

    @property
    def ref(self) -> str:
        """`deployment/web`, as the result lines print it."""
        return f"{(self.kind or 'object').lower()}/{self.name or '?'}"

    @property
    def label(self) -> str:
        """`web.yaml#2 (Deployment/web)`, as the error lines print it."""
        if self.kind and self.name:
            return f"{self.source} ({self.kind}/{self.name})"
        return self.source


# -- kinds edgefed does not serve ------------------------------------------------------

_RBAC = ("Kubernetes RBAC grants access to a Kubernetes API server, which edge pods do "
         "not have; edgefed's own API access is by token roles (fedctl apitoken create "
         "--role)")
_STORAGE = ("no network storage at the edge: a pod keeps data in a hostPath or emptyDir "
            "volume")
_EXTENDS_API = "extends a Kubernetes API server; edgefed has none to extend"

SKIPPED_KINDS: dict[str, str] = {
    "Service": ("Services are not served at the edge yet: reach a pod on its node by "
                f"hostPort or hostNetwork ({SERVICES_PROPOSAL})"),
    "Endpoints": f"belongs to Services, not served at the edge ({SERVICES_PROPOSAL})",
    "EndpointSlice": f"belongs to Services, not served at the edge ({SERVICES_PROPOSAL})",
    "Ingress": ("no ingress controller at the edge: expose a pod on its node with hostPort "
                f"or hostNetwork ({SERVICES_PROPOSAL})"),
    "IngressClass": "no ingress controller at the edge",
    "ServiceAccount": ("pods get no Kubernetes API identity at the edge (no API server to "
                       "call): no token is mounted"),
    "Role": _RBAC,
    "ClusterRole": _RBAC,
    "RoleBinding": _RBAC,
    "ClusterRoleBinding": _RBAC,
    "PersistentVolumeClaim": _STORAGE,
    "PersistentVolume": _STORAGE,
    "StorageClass": _STORAGE,
    "PodDisruptionBudget": "not honoured: `fedctl drain` moves pods without a budget",
    "HorizontalPodAutoscaler": "replicas are not autoscaled: spec.replicas stays as applied",
    "PriorityClass": f"pod priority is not used yet ({ISSUE_18})",
    "LimitRange": "not enforced: requests and limits are taken as each pod writes them",
    "ResourceQuota": "not enforced: a namespace's pods are not counted against a quota",
    "CustomResourceDefinition": _EXTENDS_API,
    "APIService": _EXTENDS_API,
    "MutatingWebhookConfiguration": _EXTENDS_API,
    "ValidatingWebhookConfiguration": _EXTENDS_API,
    "ValidatingAdmissionPolicy": _EXTENDS_API,
    "ValidatingAdmissionPolicyBinding": _EXTENDS_API,
}
"""Kubernetes kinds that have no meaning at the edge, and why (one line each)."""

REFUSED_KINDS: dict[str, str] = {
    "StatefulSet": "a Deployment (with a hostPath volume for its data) or a DaemonSet",
    "ReplicaSet": "a Deployment",
    "ReplicationController": "a Deployment",
    "Job": "a Pod with restartPolicy: OnFailure or Never",
    "CronJob": "a Pod with restartPolicy: OnFailure, started on schedule from outside",
    "NetworkPolicy": "",
}
"""Kubernetes kinds that would run or protect something edgefed does not: refused with
the nearest served kind (skipping them would read as success)."""

_NOT_ENFORCED = {"NetworkPolicy": "not enforced at the edge: applying it would suggest a "
                                  "protection that is not there"}


# -- the supported alternative of a refused field ----------------------------------------

_HINTS: tuple[tuple[re.Pattern[str], str, bool], ...] = tuple(
    (re.compile(p), alt, planned) for p, alt, planned in (
        (r"\.env\[\d+\]\.valueFrom$", "`value`, or mount the ConfigMap or Secret as a "
         "configMap/secret volume", True),
        (r"\.envFrom$", "mount the ConfigMap or Secret as a configMap/secret volume", True),
        (r"\.initContainers$", "run the steps before the main process in one container "
         "(`sh -c 'step && exec main'`)", True),
        (r"\.affinity$", "nodeSelector (exact label match)", True),
        (r"\.(serviceAccountName|automountServiceAccountToken)$",
         "leave it out: no API token is mounted at the edge", True),
        (r"\.serviceAccount$", "serviceAccountName (serviceAccount is its deprecated alias)",
         False),
        (r"\.imagePullSecrets$", "", True),
        (r"\.(hostPID|hostIPC)$", "", True),
        (r"\.(dnsPolicy|dnsConfig)$", "leave it out: pods use the node's resolver", True),
        (r"\.priorityClassName$", "", True),
        (r"\.rollingUpdate\.maxSurge$", "rollingUpdate.maxUnavailable", True),
        (r"\.volumeMounts\[\d+\]\.mountPropagation$", "", True),
        (r"\.securityContext\.(seLinuxOptions|seLinuxChangePolicy|appArmorProfile|windowsOptions)$",
         "seccompProfile, capabilities and allowPrivilegeEscalation confine a container "
         "(docs/pods.md)", False),
        (r"\.topologySpreadConstraints$", f"podAntiAffinity on kubernetes.io/hostname, "
         f"planned in {ISSUE_18}; nodeSelector today", False),
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


# -- a document's outcome -----------------------------------------------------------------

_UNEXPANDED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-=?+][^}]*)?\}")
_OWN_SHELL = {"command", "args", "data", "stringData"}
"""Where `${NAME}` may be the pod's own: a shell in the container expands it (command,
args) or a file holds it (a ConfigMap's or Secret's data)."""


def unexpanded(value: Any, path: str = "") -> tuple[str, str, str] | None:
    """(field path, variable, value) of the first `${NAME}` left in an image, or standing for
    a whole value anywhere a shell or file in the pod would not expand it."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in _OWN_SHELL:
                found = unexpanded(v, f"{path}.{k}" if path else str(k))
                if found:
                    return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = unexpanded(v, f"{path}[{i}]")
            if found:
                return found
    elif isinstance(value, str) and "${" in value:
        m = _UNEXPANDED.search(value)
        if m and (path.endswith(".image") or m.group(0) == value.strip()):
            return path, m.group(1), value
    return None


def _unexpanded_problem(body: dict[str, Any]) -> Problem | None:
    """A `${NAME}` nobody expanded (a template applied as it is): cloudcore would accept
    it and the node fail later with CreateContainerConfigError."""
    found = unexpanded(body)
    if not found:
        return None
    path, var, value = found
    return Problem(
        field=path,
        reason=f"is {value!r}: ${{{var}}} was not expanded (fedctl does not expand "
               f"variables)",
        alternative=f"set it and expand the file first, e.g. `export {var}=...; "
                    f"envsubst < FILE | fedctl apply -f -`")


def _kind_outcome(source: str, kind: str, name: str, api_version: str) -> Outcome | None:
    """The outcome of a kind edgefed does not serve, or None for a served kind."""
    if kind in BY_KIND:
        return None
    if kind in SKIPPED_KINDS:
        return Outcome(source, kind, name, "skipped", reason=SKIPPED_KINDS[kind])
    if kind in REFUSED_KINDS:
        alt = REFUSED_KINDS[kind]
        why = _NOT_ENFORCED.get(kind, f"kind {kind} is not run by edgefed")
        return Outcome(source, kind, name, "refused",
                       problems=(Problem("kind", why, alternative=alt),))
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    if group and "." in group and not group.endswith(".k8s.io"):
        why = (f"{kind} ({api_version}) is a custom resource; edgefed serves no custom "
               f"resources")
        return Outcome(source, kind, name, "refused", problems=(Problem("kind", why),))
    served = sorted(BY_KIND)
    close = difflib.get_close_matches(kind, served, n=1)
    why = (f"unknown kind {kind!r}" if kind else "no kind") + (
        f" (did you mean {close[0]!r}?)" if close else "")
    return Outcome(source, kind, name, "refused", problems=(
        Problem("kind", why, alternative=f"one of {', '.join(served)}"),))


def judge(doc: Any, source: str) -> Outcome:
    """One raw document -> its outcome (no duplicate check: `plan` does that)."""
    if not isinstance(doc, dict):
        return Outcome(source, "", "", "refused", problems=(
            Problem(None, "a document must be a mapping with apiVersion, kind and "
                          "metadata"),))
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else ""
    meta: dict[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    api_version = doc.get("apiVersion") if isinstance(doc.get("apiVersion"), str) else ""
    ns = meta.get("namespace") if isinstance(meta.get("namespace"), str) else ""
    outcome = _judge_served(doc, source, str(kind), str(name), str(api_version))
    return dataclasses.replace(outcome, namespace=str(ns)) if ns else outcome


def _judge_served(doc: dict[str, Any], source: str, kind: str, name: str,
                  api_version: str) -> Outcome:
    unserved = _kind_outcome(source, kind, name, api_version)
    if unserved is not None:
        return unserved
    try:
        document = manifests.validate(doc, source)
    except ManifestError as exc:
        found = [] if REDACTED in exc.message else problems_of(doc)
        if not found:  # a check of the manifest reader's own (a redacted Secret value)
            reason = exc.message.removeprefix(f"{source} ({kind}/{name}): ")
            if exc.field:
                reason = reason.removeprefix(f"{exc.field} ")
            found = [Problem(exc.field, reason)]
        return Outcome(source, str(kind), str(name), "refused", problems=tuple(found))
    bad = _unexpanded_problem(document.body)
    if bad is not None:
        return Outcome(source, str(kind), str(name), "refused", problems=(bad,))
    return Outcome(source, str(kind), str(name), "apply", document=document)


def plan(paths: list[str], *, recursive: bool = False,
         stdin: TextIO | None = None) -> list[Outcome]:
    """The outcome of every document of `paths` (`-` is stdin), in order.

    A file that cannot be read or parsed is one refused outcome (its source is the
    file); an object defined twice is refused the second time. Raises ManifestError
    only when the paths hold no document at all."""
    out: list[Outcome] = []
    seen: dict[tuple[str, str | None, str], str] = {}
    for source, doc in manifests.read(paths, recursive=recursive, stdin=stdin):
        if isinstance(doc, ManifestError):
            reason = doc.message.removeprefix(f"{source}: ")
            out.append(Outcome(source, "", "", "refused",
                               problems=(Problem(doc.field, reason),)))
            continue
        outcome = judge(doc, source)
        d = outcome.document
        if d is not None:
            key = (d.kind.kind, d.namespace, d.name)
            if key in seen:
                outcome = Outcome(source, outcome.kind, outcome.name, "refused", problems=(
                    Problem("metadata.name", f"{d.ref} is also defined in {seen[key]}"),))
            else:
                seen[key] = source
        out.append(outcome)
    if not out:
        raise ManifestError(f"no objects found in {', '.join(paths)}")
    return out


__all__ = ["MAX_PROBLEMS", "REFUSED_KINDS", "SKIPPED_KINDS", "Outcome", "Problem",
           "hint", "judge", "plan", "problems_of", "unexpanded"]
