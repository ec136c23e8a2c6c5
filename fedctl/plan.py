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

Every problem of a document is found by `shared.problems.problems_of`, the judge
cloudcore's API uses too (its 422 lists the same fields); `Problem`, `hint`,
`problems_of` and `MAX_PROBLEMS` are re-exported here.

A workload kind edgefed does not run (StatefulSet, Job, CronJob, ReplicaSet) and any
kind it does not know (custom resources included) are refused, not skipped: the
document is the thing the user wants running, and "skipped" would read as success.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from fedctl import manifests
from fedctl.errors import ManifestError
from fedctl.kinds import BY_KIND
from shared.kinds import REDACTED
from shared.problems import MAX_PROBLEMS, Problem, hint, problems_of

SERVICES_PROPOSAL = "docs/proposals/0005-edge-services.md"

Status = Literal["apply", "skipped", "refused"]


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
