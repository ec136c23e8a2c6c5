"""Workload isolation policy: Kubernetes' Pod Security Standards, for edgefed's pods.

Three levels, as Kubernetes defines them, each allowing less than the one before:

- `privileged`: no check at all (system pods, device access the admin trusts).
- `baseline` (the cloud's default): no privileged container, no host network, PID or
  IPC namespace (`hostNetwork`, `hostPID`, `hostIPC`), no `Unconfined` seccomp, no
  `procMount: Unmasked`, sysctls only from Kubernetes' safe set (`SAFE_SYSCTLS`),
  capabilities added only from Kubernetes' baseline set, no `hostPort`, no hostPath
  (so no host device) except under a prefix the admin allows (`HostPathRule`:
  read-only unless the prefix is allowed `rw`, which means every container mounts it
  `readOnly: true`). Accelerators requested as resources (`nvidia.com/gpu: 1`) go
  through the node's device plugin and stay allowed.
- `restricted`: baseline plus Kubernetes' hardening: no hostPath at all (volumes are
  configMap, secret and emptyDir), `runAsNonRoot: true` and no `runAsUser: 0`,
  `allowPrivilegeEscalation: false`, `capabilities.drop: [ALL]` (add only
  NET_BIND_SERVICE), seccomp `RuntimeDefault` or `Localhost` set explicitly.

A namespace picks its level with the label Kubernetes users already write,
`pod-security.kubernetes.io/enforce` (`level_of`); without one the cloud's default
applies. cloudcore checks a workload's pod template at apply (`check`) and records the
level and the hostPath rules it was admitted under on the object (`Admitted`, as
annotations); the pod's desired entry carries them, so the agent checks the very same
spec again under the same level before it creates a container, and a spec that slipped
past the cloud still cannot run. A later relabel of the namespace does not touch pods
already admitted (as in Kubernetes); it applies to the next apply.

The module is pure and free of pydantic: it reads either schema (`shared.models` on the
cloud, `shared.pods` on the edge) by their common attribute names. `effective` merges a
container's securityContext over its pod's, for the checks here and for the runtime.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from shared.errors import ObjectError

Level = Literal["privileged", "baseline", "restricted"]
LEVELS: tuple[Level, ...] = ("privileged", "baseline", "restricted")
"""From the most permissive to the strictest."""
DEFAULT_LEVEL: Level = "baseline"
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
"""The namespace label that sets its level (Kubernetes' name)."""
LEVEL_ANNOTATION = "edgefed.io/pod-security"
"""On an admitted Pod or a workload's pod template: the level it was admitted under
(set by cloudcore at apply; a value the user writes is overwritten)."""
HOST_PATH_ANNOTATION = "edgefed.io/host-path-allow"
"""Beside LEVEL_ANNOTATION: the allowlist rules the pod's hostPath volumes were admitted
by, comma-separated (absent when it has none)."""

BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
"""Capabilities baseline lets a container add (Kubernetes' list; also the runtime's
default set)."""
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes"})
"""The sysctls baseline allows (Kubernetes' safe set: namespaced, isolated per pod)."""
"""The only capability restricted lets a container add (after dropping ALL)."""


def valid_level(value: object) -> TypeGuard[Level]:
    """Whether `value` is one of the LEVELS."""
    return value in LEVELS


def stricter(a: Level, b: Level) -> Level:
    """The stricter of two levels (an agent's own floor over an entry's level)."""
    return a if LEVELS.index(a) >= LEVELS.index(b) else b


def level_of(labels: Mapping[str, str], default: Level = DEFAULT_LEVEL) -> Level:
    """A namespace's level from its labels; raises ObjectError naming the label if the
    value is not a level."""
    value = labels.get(ENFORCE_LABEL)
    if value is None:
        return default
    if not valid_level(value):
        raise ObjectError(f"metadata.labels[{ENFORCE_LABEL!r}]: {value!r} is not a policy "
                          f"level; one of {', '.join(LEVELS)}", field="metadata.labels")
    return value


# -- hostPath allowlist ---------------------------------------------------------------------


@dataclass(frozen=True)
class HostPathRule:
    """A host directory (or file) prefix pods below `privileged` may mount: read-only
    unless `writable`. Written `PREFIX` or `PREFIX:ro` (read-only), `PREFIX:rw`."""

    prefix: str
    writable: bool = False

    @classmethod
    def parse(cls, text: str) -> HostPathRule:
        """Raises ValueError with a readable reason."""
        prefix, writable = text, False
        for suffix, rw in ((":rw", True), (":ro", False)):
            if text.endswith(suffix):
                prefix, writable = text[: -len(suffix)], rw
        parts = prefix.split("/")
        if not prefix.startswith("/") or ".." in parts or "\x00" in prefix or "," in prefix:
            raise ValueError(f"hostPath allow rule {text!r}: the prefix must be an absolute "
                             "path without '..' or ',' (PREFIX, PREFIX:ro or PREFIX:rw)")
        return cls(_norm(prefix), writable)

    def covers(self, path: str) -> bool:
        """Whether `path` is the prefix or below it (whole path components only)."""
        p = _norm(path)
        return self.prefix in ("/", p) or p.startswith(self.prefix + "/")

    def __str__(self) -> str:
        return f"{self.prefix}:rw" if self.writable else self.prefix


def parse_host_path_allow(items: Iterable[str]) -> tuple[HostPathRule, ...]:
    """`--host-path-allow` values (each may hold several rules, comma-separated)."""
    return tuple(HostPathRule.parse(r.strip()) for item in items for r in item.split(",")
                 if r.strip())


def host_path_rule(path: str, allow: Iterable[HostPathRule]) -> HostPathRule | None:
    """The rule that admits `path`: the longest covering prefix (a writable rule wins
    over a read-only one of the same prefix); None if no rule covers it. The agent calls
    it again with the path resolved on the node (symbolic links followed)."""
    best: HostPathRule | None = None
    for rule in allow:
        if rule.covers(path) and (best is None or (len(rule.prefix), rule.writable)
                                  > (len(best.prefix), best.writable)):
            best = rule
    return best


def _norm(path: str) -> str:
    """`/a//b/` -> `/a/b` (POSIX's normpath keeps a leading `//`; hostPaths never mean it)."""
    return posixpath.normpath("/" + path.lstrip("/"))


def is_host_device(path: str, type_: str | None) -> bool:
    """A hostPath that is a device node (by its type, or because it is under /dev)."""
    p = _norm(path)
    return type_ in ("CharDevice", "BlockDevice") or p == "/dev" or p.startswith("/dev/")


# -- effective security settings of a container ----------------------------------------------


@dataclass(frozen=True)
class Effective:
    """A container's security settings after merging its pod's (container wins), with
    edgefed's defaults where neither sets one: what the runtime applies."""

    run_as_user: int | None
    run_as_group: int | None
    run_as_non_root: bool
    fs_group: int | None
    supplemental_groups: tuple[int, ...]
    privileged: bool
    allow_privilege_escalation: bool
    """False unless set true or privileged: edgefed sets noNewPrivileges by default."""
    read_only_root_filesystem: bool
    cap_add: tuple[str, ...]
    """Without a `CAP_` prefix, as written in Kubernetes."""
    cap_drop: tuple[str, ...]
    seccomp: Literal["RuntimeDefault", "Unconfined", "Localhost"]
    """RuntimeDefault when neither the container nor the pod sets a profile."""
    seccomp_localhost: str | None
    host_users: bool
    host_network: bool
    host_pid: bool = False
    host_ipc: bool = False
    proc_unmasked: bool = False
    """procMount: Unmasked (no masked or read-only /proc paths)."""
    sysctls: tuple[tuple[str, str], ...] = ()
    """The pod's (name, value) pairs."""

    def user(self) -> str | None:
        """The runtime's "uid[:gid]" or None (the image's user)."""
        if self.run_as_user is None:
            return None
        if self.run_as_group is None:
            return str(self.run_as_user)
        return f"{self.run_as_user}:{self.run_as_group}"


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _cap(name: str) -> str:
    return name.removeprefix("CAP_")


def effective(spec: Any, container: Any) -> Effective:
    """Merge `container.security_context` over `spec.security_context` (either schema)."""
    sc, pod = container.security_context, spec.security_context
    caps = sc.capabilities if sc is not None else None
    profile = _first(sc and sc.seccomp_profile, pod and pod.seccomp_profile)
    privileged = bool(sc and sc.privileged)
    escalation = sc.allow_privilege_escalation if sc is not None else None
    return Effective(
        run_as_user=_first(sc and sc.run_as_user, pod and pod.run_as_user),
        run_as_group=_first(sc and sc.run_as_group, pod and pod.run_as_group),
        run_as_non_root=bool(_first(sc and sc.run_as_non_root, pod and pod.run_as_non_root)),
        fs_group=pod.fs_group if pod is not None else None,
        supplemental_groups=tuple(pod.supplemental_groups) if pod is not None else (),
        privileged=privileged,
        allow_privilege_escalation=privileged or bool(escalation),
        read_only_root_filesystem=bool(sc and sc.read_only_root_filesystem),
        cap_add=tuple(_cap(c) for c in caps.add) if caps is not None else (),
        cap_drop=tuple(_cap(c) for c in caps.drop) if caps is not None else (),
        seccomp=profile.type if profile is not None else "RuntimeDefault",
        seccomp_localhost=profile.localhost_profile if profile is not None else None,
        host_users=spec.host_users,
        host_network=spec.host_network,
        host_pid=spec.host_pid,
        host_ipc=spec.host_ipc,
        proc_unmasked=bool(sc and sc.proc_mount == "Unmasked"),
        sysctls=tuple((x.name, x.value) for x in pod.sysctls) if pod is not None else (),
    )


# -- the check ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One thing a pod spec does that its level does not allow."""

    field: str
    """Dotted path of the offending field, e.g. spec.containers[0].securityContext.privileged."""
    value: Any
    level: Level
    message: str

    def __str__(self) -> str:
        return f"{self.field}={_show(self.value)}: {self.message} (policy {self.level})"


def _show(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def check(spec: Any, level: Level, *, host_path_allow: Iterable[HostPathRule] = (),
          path: str = "spec") -> list[Violation]:
    """Every way the pod spec (a `shared.models.PodSpec` or `shared.pods.PodSpec`)
    breaks `level`, in field order; [] if it may run. `path` is the dotted path of the
    spec in the document (`spec.template.spec` for a workload)."""
    if level not in LEVELS:
        raise ValueError(f"unknown policy level {level!r}")
    if level == "privileged":
        return []
    return _Checker(spec, level, tuple(host_path_allow), path).run()


@dataclass
class _Checker:
    spec: Any
    level: Level
    allow: tuple[HostPathRule, ...]
    path: str
    out: list[Violation] = field(default_factory=list)

    def bad(self, at: str, value: Any, message: str) -> None:
        self.out.append(Violation(f"{self.path}.{at}", value, self.level, message))

    def run(self) -> list[Violation]:
        spec, restricted = self.spec, self.level == "restricted"
        if spec.host_network:
            self.bad("hostNetwork", True, "the host's network namespace is not allowed")
        if spec.host_pid:
            self.bad("hostPID", True, "the host's process namespace is not allowed")
        if spec.host_ipc:
            self.bad("hostIPC", True, "the host's IPC namespace is not allowed")
        pod = spec.security_context
        if pod is not None:
            self._seccomp("securityContext.seccompProfile", pod.seccomp_profile)
            for i, x in enumerate(pod.sysctls):
                if x.name not in SAFE_SYSCTLS:
                    self.bad(f"securityContext.sysctls[{i}].name", x.name,
                             "only Kubernetes' safe sysctls are allowed ("
                             f"{', '.join(sorted(SAFE_SYSCTLS))})")
            if restricted and pod.run_as_user == 0:
                self.bad("securityContext.runAsUser", 0, "running as root is not allowed")
        for i, vol in enumerate(spec.volumes):
            if vol.host_path is not None:
                self._host_path(i, vol)
        for i, c in enumerate(spec.init_containers):
            self._container(f"initContainers[{i}]", c)
        for i, c in enumerate(spec.containers):
            self._container(f"containers[{i}]", c)
        return self.out

    def _seccomp(self, at: str, profile: Any) -> None:
        if profile is not None and profile.type == "Unconfined":
            self.bad(f"{at}.type", "Unconfined", "running without a seccomp filter is not "
                                                 "allowed")

    def _host_path(self, i: int, vol: Any) -> None:
        at, hp = f"volumes[{i}].hostPath.path", vol.host_path
        what = "host device" if is_host_device(hp.path, hp.type) else "hostPath"
        if self.level == "restricted":
            self.bad(at, hp.path, f"{what} volumes are not allowed (restricted allows "
                                  "configMap, secret and emptyDir volumes)")
            return
        rule = host_path_rule(hp.path, self.allow)
        if rule is None:
            allowed = ", ".join(map(str, self.allow)) or "none"
            self.bad(at, hp.path, f"{what} is not under a prefix the admin allows "
                                  f"(allowed: {allowed})")
            return
        if rule.writable:
            return
        for at, c in _containers(self.spec):
            for k, m in enumerate(c.volume_mounts):
                if m.name == vol.name and not m.read_only:
                    self.bad(f"{at}.volumeMounts[{k}].readOnly", False,
                             f"{hp.path} is allowed read-only (prefix {rule.prefix}); "
                             "set readOnly: true")

    def _container(self, at: str, c: Any) -> None:
        sc, restricted = c.security_context, self.level == "restricted"
        sat = f"{at}.securityContext"
        for j, port in enumerate(c.ports):
            if port.host_port:
                self.bad(f"{at}.ports[{j}].hostPort", port.host_port,
                         "host ports are not allowed")
        if sc is not None:
            if sc.privileged:
                self.bad(f"{sat}.privileged", True, "privileged containers are not allowed")
            if sc.proc_mount == "Unmasked":
                self.bad(f"{sat}.procMount", "Unmasked", "an unmasked /proc is not allowed")
            self._seccomp(f"{sat}.seccompProfile", sc.seccomp_profile)
            caps = sc.capabilities
            allowed = RESTRICTED_CAPABILITIES if restricted else BASELINE_CAPABILITIES
            for j, name in enumerate(caps.add if caps is not None else ()):
                if _cap(name) not in allowed:
                    self.bad(f"{sat}.capabilities.add[{j}]", name,
                             f"adding this capability is not allowed (allowed: "
                             f"{', '.join(sorted(allowed))})")
        if not restricted:
            return
        eff = effective(self.spec, c)
        if sc is None or sc.allow_privilege_escalation is not False:
            self.bad(f"{sat}.allowPrivilegeEscalation",
                     sc.allow_privilege_escalation if sc is not None else None,
                     "must be false")
        if not eff.run_as_non_root:
            self.bad(f"{sat}.runAsNonRoot",
                     sc.run_as_non_root if sc is not None else None,
                     "must be true (here or in the pod's securityContext)")
        if sc is not None and sc.run_as_user == 0:
            self.bad(f"{sat}.runAsUser", 0, "running as root is not allowed")
        if "ALL" not in eff.cap_drop:
            self.bad(f"{sat}.capabilities.drop", list(eff.cap_drop), "must include ALL")
        explicit = _first(sc and sc.seccomp_profile,
                          self.spec.security_context and self.spec.security_context.seccomp_profile)
        if explicit is None:
            self.bad(f"{sat}.seccompProfile.type", None, "must be RuntimeDefault or "
                     "Localhost (here or in the pod's securityContext)")


def _containers(spec: Any) -> list[tuple[str, Any]]:
    """Every container of a pod with its dotted path: init containers first."""
    return [*((f"initContainers[{i}]", c) for i, c in enumerate(spec.init_containers)),
            *((f"containers[{i}]", c) for i, c in enumerate(spec.containers))]


# -- what an admitted pod carries ---------------------------------------------------------------


@dataclass(frozen=True)
class Admitted:
    """The level (and the hostPath rules) a pod was admitted under: annotations on the
    object in the cloud, a `policy` value in its desired entry."""

    level: Level
    host_path_allow: tuple[HostPathRule, ...] = ()

    @classmethod
    def of(cls, spec: Any, level: Level, allow: Sequence[HostPathRule]) -> Admitted:
        """What to record for a spec admitted under `level`: the rules its hostPath
        volumes matched (none below or above baseline: privileged needs none,
        restricted allows none)."""
        if level != "baseline":
            return cls(level)
        used = {host_path_rule(v.host_path.path, allow) for v in spec.volumes
                if v.host_path is not None}
        return cls(level, tuple(r for r in allow if r in used))

    def annotations(self) -> dict[str, str]:
        out: dict[str, str] = {LEVEL_ANNOTATION: self.level}
        if self.host_path_allow:
            out[HOST_PATH_ANNOTATION] = ",".join(map(str, self.host_path_allow))
        return out

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> Admitted | None:
        """None if the object was stored before admission recorded levels (or the
        annotations are not ours to trust: garbled values are ignored, not guessed)."""
        level = annotations.get(LEVEL_ANNOTATION)
        if not valid_level(level):
            return None
        try:
            rules = parse_host_path_allow([annotations.get(HOST_PATH_ANNOTATION, "")])
        except ValueError:
            return None
        return cls(level, rules)

    def entry_value(self) -> dict[str, Any]:
        out: dict[str, Any] = {"level": self.level}
        if self.host_path_allow:
            out["hostPathAllow"] = [str(r) for r in self.host_path_allow]
        return out

    @classmethod
    def from_entry(cls, value: Any, where: str = "policy") -> Admitted:
        """A desired entry's `policy` value; raises ObjectError naming the field."""
        if not isinstance(value, dict) or not valid_level(value.get("level")):
            raise ObjectError(f"{where}: must be a mapping with a level ({', '.join(LEVELS)})",
                              field=where)
        unknown = sorted(set(value) - {"level", "hostPathAllow"})
        if unknown:
            raise ObjectError(f"{where}: unknown keys {unknown}", field=where)
        rules = value.get("hostPathAllow", [])
        if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
            raise ObjectError(f"{where}.hostPathAllow: must be a list of strings",
                              field=f"{where}.hostPathAllow")
        try:
            return cls(value["level"], parse_host_path_allow(rules))
        except ValueError as exc:
            raise ObjectError(f"{where}.hostPathAllow: {exc}",
                              field=f"{where}.hostPathAllow") from None
