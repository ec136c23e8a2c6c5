"""Admission: what every apply passes before anything changes (Kubernetes' admission
plugins NamespaceLifecycle and PodSecurity, for the cloud).

Namespaces must exist (NamespaceLifecycle): a namespaced object whose namespace has no
Namespace object, is not `default` or `kube-system` (which always exist) and is not
created by a Namespace document of the same apply is refused with `NamespaceNotFound`
(HTTP 404, `namespaces "X" not found`), unless the apply asks for missing namespaces
to be created (`create_namespaces`, fedctl's `--create-namespace`, as Helm's).

Priority (Kubernetes' Priority plugin): a pod spec (a Pod's, or a DaemonSet's or
Deployment's template) naming `priorityClassName` gets that PriorityClass's value as
`spec.priority`; one naming none gets the `globalDefault` class's name and value if
there is one (else no priority, which counts as 0). A class that does not exist is
refused (Kubernetes refuses the pod; here the workload too, at apply, so the error is
where the user looks), and so is a hand-written `priority` that differs from the
class's. PriorityClasses of the same apply count. A class's `value` cannot change (as
in Kubernetes: delete and create it again), and only one class is `globalDefault`.

Pod security: every apply (and dry run: both go through `Fleet.plan`) passes its objects here before
anything changes. A Pod, or a DaemonSet's or Deployment's pod template, is checked
against its namespace's level (the `pod-security.kubernetes.io/enforce` label of the
Namespace object, else `PolicySettings.default_level`); a Namespace in the same apply
counts with its new labels, as if applied first (kubectl applies a file's Namespace
before what goes in it). If anything breaks its level, the whole apply is refused with
`PolicyRefused` (HTTP 422) listing every violation of every object, one line each.

What passes is stamped with what it was admitted under (`shared.policy.Admitted`, as
annotations on the Pod or the pod template, which the pods made from it inherit); the
pod's desired entry carries it and the agent checks the same spec under the same level
before it runs it. A value a user writes in those annotations is overwritten.

Relabelling a namespace changes nothing that already runs (as in Kubernetes); the
next apply of a workload there is checked under the new level.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from cloudcore.errors import ConfigError, NamespaceNotFound
from cloudcore.fleet.objects import ALWAYS_NAMESPACES
from shared.errors import ObjectError
from shared.kinds import NAMESPACED_KINDS
from shared.models import (
    SYSTEM_PRIORITY_CLASSES,
    DaemonSet,
    Deployment,
    Namespace,
    NamespaceMeta,
    Pod,
    PodSpec,
    PriorityClass,
)
from shared.policy import (
    ENFORCE_LABEL,
    HOST_PATH_ANNOTATION,
    LEVELS,
    Admitted,
    HostPathRule,
    Level,
    Violation,
    check,
    level_of,
    parse_host_path_allow,
)


@dataclass(frozen=True)
class PolicySettings:
    default_level: Level = "baseline"
    """Level of a namespace without the `pod-security.kubernetes.io/enforce` label
    (`--default-pod-security`): privileged, baseline or restricted."""
    host_path_allow: tuple[HostPathRule, ...] = ()
    """hostPath prefixes pods at baseline may mount (`--host-path-allow PREFIX[:rw]`,
    repeatable): read-only unless `:rw`. Empty: no hostPath below privileged."""

    @classmethod
    def from_flags(cls, *, default_level: str = "baseline",
                   host_path_allow: Iterable[str] = ()) -> PolicySettings:
        """From the CLI's strings; raises ConfigError naming the flag."""
        if default_level not in LEVELS:
            raise ConfigError(f"--default-pod-security: {default_level!r} is not one of "
                              f"{', '.join(LEVELS)}")
        try:
            rules = parse_host_path_allow(host_path_allow)
        except ValueError as exc:
            raise ConfigError(f"--host-path-allow: {exc}") from None
        return cls(default_level, rules)  # type: ignore[arg-type]

    def validate(self) -> None:
        if self.default_level not in LEVELS:
            raise ConfigError(f"policy.default_level: {self.default_level!r} is not one of "
                              f"{', '.join(LEVELS)}")


class PolicyRefused(ObjectError):
    """An apply broke its namespaces' policy levels: every violation, one line each."""

    def __init__(self, refused: list[tuple[str, list[Violation]]]) -> None:
        self.refused = refused
        """(object, e.g. "DaemonSet default/web", its violations) per refused object."""
        lines = [f"{obj}: {v}" for obj, vs in refused for v in vs]
        n = len(lines)
        super().__init__(
            f"refused by pod security policy ({n} violation{'s' if n != 1 else ''}):\n"
            + "\n".join(lines),
            field=refused[0][1][0].field)

    @property
    def violations(self) -> list[Violation]:
        return [v for _, vs in self.refused for v in vs]


class Admission:
    """Checks and stamps the workloads of an apply (see the module docstring)."""

    def __init__(self, settings: PolicySettings | None = None) -> None:
        self.settings = settings or PolicySettings()

    def level(self, namespace: str, namespaces: Mapping[str, Namespace]) -> Level:
        """The namespace's level; a stored label that is not a level (written before
        admission checked labels) counts as restricted, as Kubernetes treats it."""
        ns = namespaces.get(namespace)
        try:
            return level_of(ns.metadata.labels if ns is not None else {},
                            self.settings.default_level)
        except ObjectError:
            return "restricted"

    def admit(self, objs: list[Any], namespaces: Mapping[str, Namespace], *,
              create_namespaces: bool = False,
              classes: Mapping[str, PriorityClass] | None = None) -> list[str]:
        """Check every object in `objs` and stamp the workloads that pass; raise
        NamespaceNotFound (the first object's namespace that does not exist),
        PolicyRefused (every violation) or ObjectError (a Namespace label that is not a
        level) and change nothing if any fails. Returns the namespaces the apply must
        create first (only with `create_namespaces`), in order of first use."""
        missing = missing_namespaces(objs, namespaces)
        if missing and not create_namespaces:
            raise NamespaceNotFound(missing[0])
        priorities = resolve_priorities(objs, classes or {})
        levels = dict(namespaces)
        for obj in objs:
            if isinstance(obj, Namespace):
                try:
                    level_of(obj.metadata.labels)
                except ObjectError as exc:
                    raise ObjectError(f"Namespace {obj.metadata.name}: {exc.message}",
                                      field=exc.field) from None
                levels[obj.metadata.name] = obj
        refused: list[tuple[str, list[Violation]]] = []
        stamps: list[tuple[dict[str, str], Admitted]] = []
        for obj in objs:
            target = _pod_spec(obj)
            if target is None:
                continue
            spec, path, annotations = target
            level = self.level(obj.metadata.namespace, levels)
            violations = check(spec, level, host_path_allow=self.settings.host_path_allow,
                               path=path)
            if violations:
                refused.append((f"{obj.kind} {obj.metadata.namespace}/{obj.metadata.name}",
                                violations))
            else:
                stamps.append((annotations, Admitted.of(spec, level,
                                                        self.settings.host_path_allow)))
        if refused:
            raise PolicyRefused(refused)
        for annotations, admitted in stamps:
            annotations.pop(HOST_PATH_ANNOTATION, None)
            annotations.update(admitted.annotations())
        for obj, (name, value) in priorities:
            _set_spec(obj, msgspec.structs.replace(_pod_spec_of(obj), priority_class_name=name,
                                                   priority=value))
        return missing


def resolve_priorities(objs: list[Any], stored: Mapping[str, PriorityClass]
                       ) -> list[tuple[Any, tuple[str, int]]]:
    """(workload, (class name, priority)) for every workload of `objs` that gets a
    priority; raise ObjectError for a class that does not exist, a hand-written
    priority that differs, a changed class value or a second globalDefault."""
    classes = dict(stored)
    for obj in objs:
        if isinstance(obj, PriorityClass):
            name = obj.metadata.name
            old = classes.get(name)
            if old is not None and old.value != obj.value:
                raise ObjectError(f"PriorityClass {name}: value: may not be changed (from "
                                  f"{old.value} to {obj.value}); delete the class and "
                                  "create it again", field="value")
            classes[name] = obj
    defaults = sorted(n for n, c in classes.items() if c.global_default)
    if len(defaults) > 1:
        raise ObjectError(f"PriorityClass: only one class may be globalDefault, not "
                          f"{' and '.join(defaults)}", field="globalDefault")
    for name, value in SYSTEM_PRIORITY_CLASSES.items():  # a fleet that was never loaded
        classes.setdefault(name, PriorityClass(metadata=NamespaceMeta(name=name),
                                               value=value))
    out: list[tuple[Any, tuple[str, int]]] = []
    for obj in objs:
        target = _pod_spec(obj)
        if target is None:
            continue
        spec, path, _ = target
        name = spec.priority_class_name or (defaults[0] if defaults else None)
        what = f"{obj.kind} {obj.metadata.namespace}/{obj.metadata.name}"
        if name is None:
            if spec.priority not in (None, 0):
                raise ObjectError(f"{what}: {path}.priority: set from a PriorityClass "
                                  f"(priorityClassName), not by hand ({spec.priority})",
                                  field=f"{path}.priority")
            continue
        cls = classes.get(name)
        if cls is None:
            raise ObjectError(f"{what}: {path}.priorityClassName: no PriorityClass with "
                              f"name {name} was found", field=f"{path}.priorityClassName")
        if spec.priority is not None and spec.priority != cls.value:
            raise ObjectError(f"{what}: {path}.priority: {spec.priority} differs from the "
                              f"value {cls.value} of PriorityClass {name} (leave it out: "
                              "it is set from the class)", field=f"{path}.priority")
        out.append((obj, (name, cls.value)))
    return out


def _pod_spec_of(obj: Any) -> PodSpec:
    return obj.spec if isinstance(obj, Pod) else obj.spec.template.spec  # type: ignore[no-any-return]


def _set_spec(obj: Any, spec: PodSpec) -> None:
    if isinstance(obj, Pod):
        obj.spec = spec
    else:
        obj.spec.template.spec = spec


def missing_namespaces(objs: list[Any], namespaces: Mapping[str, Namespace]) -> list[str]:
    """The namespaces objects of `objs` live in that do not exist and that no Namespace
    of `objs` creates, in order of first use."""
    made = {o.metadata.name for o in objs if isinstance(o, Namespace)}
    out: list[str] = []
    for obj in objs:
        if obj.kind not in NAMESPACED_KINDS:
            continue
        ns = obj.metadata.namespace
        if ns in namespaces or ns in ALWAYS_NAMESPACES or ns in made or ns in out:
            continue
        out.append(ns)
    return out


def _pod_spec(obj: Any) -> tuple[PodSpec, str, dict[str, str]] | None:
    """A workload's pod spec, its dotted path, and the annotations to stamp."""
    if isinstance(obj, Pod):
        return obj.spec, "spec", obj.metadata.annotations
    if isinstance(obj, DaemonSet | Deployment):
        tpl = obj.spec.template
        return tpl.spec, "spec.template.spec", tpl.metadata.annotations
    return None


__all__ = ["ENFORCE_LABEL", "Admission", "PolicyRefused", "PolicySettings",
           "missing_namespaces"]
