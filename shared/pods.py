"""Pods as plain data: the spec the edge reads from a desired entry, the status it reports.

`shared.models` is the pydantic schema cloudcore and fedctl validate users' objects
with. The edge agent never sees a user's document, only the canonical spec
cloudcore wrote into a `pod/...` entry (`shared.entries.pod_entry`), and pydantic
with its compiled core would be a third of a small device's agent RSS. So the edge
reads pod entries with the slotted dataclasses here: the same attribute names and
helper methods as the pydantic models, the same rules (every field checked, unknown
fields refused, the cross-field checks of `shared.models` repeated), but no type
coercion: a value of the wrong JSON type is an error, not converted. Anything else
wrong becomes an `ObjectError` naming the dotted field, which the reconciler turns
into an InvalidSpec pod status (tests/shared/test_pods_parity.py holds the two
schemas side by side).

Statuses go the other way: the edge builds `PodStatus` / `ContainerStatus` /
`LastState` and `to_wire()` renders exactly what `shared.models.PodStatus` would dump
(camelCase, None left out), which cloudcore validates on arrival.
"""

# `_f(...)` returns a `dataclasses.field` carrying the field's parser; ruff cannot see that.
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from shared.errors import ObjectError, UnsupportedField
from shared.quantity import parse_resource
from shared.topics import valid_node_name

T = TypeVar("T")
_Parse = Callable[[Any, str], Any]
MAX_NAME = 253


_ALIASES = {"pod_ip": "podIP"}  # where Kubernetes' name is not plain camelCase


def _camel(name: str) -> str:
    if name in _ALIASES:
        return _ALIASES[name]
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _at(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _fail(path: str, msg: str) -> ObjectError:
    return ObjectError(f"{path}: {msg}" if path else msg, field=path or None)


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


# -- value parsers: (value, path) -> value, or raise ObjectError --------------------------


def _str(*, min_length: int = 0, max_length: int | None = None) -> _Parse:
    def parse(v: Any, path: str) -> str:
        if not isinstance(v, str):
            raise _fail(path, f"must be a string, not {_type_name(v)}")
        if len(v) < min_length:
            raise _fail(path, f"must have at least {min_length} character(s)")
        if max_length is not None and len(v) > max_length:
            raise _fail(path, f"must have at most {max_length} characters")
        return v
    return parse


def _int(lo: int | None = None, hi: int | None = None) -> _Parse:
    def parse(v: Any, path: str) -> int:
        if type(v) is not int:
            raise _fail(path, f"must be an integer, not {_type_name(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _fail(path, f"must be within {lo}..{hi}" if hi is not None
                        else f"must be >= {lo}")
        return v
    return parse


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(path, f"must be true or false, not {_type_name(v)}")
    return v


def _literal(*choices: str) -> _Parse:
    def parse(v: Any, path: str) -> str:
        if not isinstance(v, str) or v not in choices:
            raise _fail(path, f"must be one of {', '.join(map(repr, choices))}, not {v!r}")
        return v
    return parse


def _port(v: Any, path: str) -> int | str:
    if type(v) is int or isinstance(v, str):
        return v  # type: ignore[no-any-return]
    raise _fail(path, f"must be a port number or name, not {_type_name(v)}")


def _opt(inner: _Parse) -> _Parse:
    def parse(v: Any, path: str) -> Any:
        return None if v is None else inner(v, path)
    return parse


def _list(item: _Parse, *, min_length: int = 0) -> _Parse:
    def parse(v: Any, path: str) -> list[Any]:
        if not isinstance(v, list):
            raise _fail(path, f"must be a list, not {_type_name(v)}")
        if len(v) < min_length:
            raise _fail(path, f"must have at least {min_length} item(s)")
        return [item(x, _at(path, i)) for i, x in enumerate(v)]
    return parse


def _map(value: _Parse) -> _Parse:
    def parse(v: Any, path: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise _fail(path, f"must be a mapping, not {_type_name(v)}")
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise _fail(path, f"keys must be strings, not {_type_name(k)}")
            out[k] = value(x, _at(path, k))
        return out
    return parse


def _quantity(v: Any, path: str) -> str | int | float:
    if not isinstance(v, str | int | float) or isinstance(v, bool):
        raise _fail(path, f"must be a quantity (string or number), not {_type_name(v)}")
    return v


def _quantities(v: Any, path: str) -> dict[str, str | int | float]:
    out: dict[str, str | int | float] = _map(_quantity)(v, path)
    for name, q in out.items():
        try:
            parse_resource(name, q, field=name)
        except ObjectError as exc:
            raise _fail(path, exc.message) from None
    return out


def _dns_name(v: Any, path: str) -> str:
    v = _str()(v, path)
    if not valid_node_name(v):
        raise _fail(path, "must be a lowercase DNS-1123 name: a-z, 0-9, '-' and '.', "
                    "starting and ending with a letter or digit, at most "
                    f"{MAX_NAME} characters")
    return v  # type: ignore[no-any-return]


def _abs_path(v: Any, path: str) -> str:
    """An absolute, normalised path without '..' and not '/' (a mount point)."""
    v = _str()(v, path)
    parts = v.split("/")
    if not v.startswith("/") or "\x00" in v or ".." in parts or not v.strip("/"):
        raise _fail(path, f"{v!r} must be an absolute path without '..', not '/'")
    return v  # type: ignore[no-any-return]


def _host_path(v: Any, path: str) -> str:
    v = _str()(v, path)
    if not v.startswith("/") or "\x00" in v or ".." in v.split("/"):
        raise _fail(path, f"{v!r} must be an absolute host path without '..'")
    return v  # type: ignore[no-any-return]


def _rel_path(v: Any, path: str) -> str:
    """A relative path of a projected file: no leading '/', no '..' component."""
    v = _str(max_length=1024)(v, path)
    parts = v.split("/")
    if not v or v.startswith("/") or "\x00" in v or ".." in parts or "" in parts:
        raise _fail(path, f"{v!r} must be a relative path without '..' or empty parts")
    return v  # type: ignore[no-any-return]


def _http_path(v: Any, path: str) -> str:
    v = _str()(v, path)
    if not v.startswith("/") or any(c.isspace() or ord(c) < 32 for c in v):
        raise _fail(path, f"{v!r} must start with '/' and contain no spaces")
    return v  # type: ignore[no-any-return]


def _f(parse: _Parse, default: Any = dataclasses.MISSING, *,
       factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its parser (and default) in the metadata."""
    if factory is not None:
        return field(default_factory=factory, metadata={"parse": parse})
    return field(default=default, metadata={"parse": parse})


# -- the parsed objects --------------------------------------------------------------------


class _Obj:
    """Base of the parsed spec objects: `parse(raw, path)` and `dump()`."""

    __slots__ = ()
    _table: ClassVar[dict[str, tuple[str, _Parse]]]

    @classmethod
    def _fields_table(cls) -> dict[str, tuple[str, _Parse]]:
        table = cls.__dict__.get("_table")
        if table is None:
            table = {}
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                table[_camel(f.name)] = (f.name, f.metadata["parse"])
                table.setdefault(f.name, (f.name, f.metadata["parse"]))
            cls._table = table
        return table

    @classmethod
    def parse(cls: type[T], raw: Any, path: str = "") -> T:
        """Raises ObjectError (UnsupportedField for an unknown field) naming the field."""
        if not isinstance(raw, dict):
            raise _fail(path, f"must be a mapping, not {_type_name(raw)}")
        table = cls._fields_table()  # type: ignore[attr-defined]
        kwargs: dict[str, Any] = {}
        for k, v in raw.items():
            spec = table.get(k) if isinstance(k, str) else None
            if spec is None:
                where = _at(path, str(k))
                raise UnsupportedField(f"{where}: field is not supported by edgefed",
                                       field=where)
            attr, parse = spec
            if attr not in kwargs:  # the camelCase name wins over the snake_case one
                kwargs[attr] = parse(v, _at(path, k))
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if (f.name not in kwargs and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                raise _fail(_at(path, _camel(f.name)), "field required")
        obj = cls(**kwargs)
        obj._check(path)  # type: ignore[attr-defined]
        return obj

    def _check(self, path: str) -> None:
        """Cross-field rules, after every field parsed (override)."""

    def dump(self) -> dict[str, Any]:
        """JSON-able dict with Kubernetes field names, defaults and None left out (as
        `shared.models` dumps it)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else f.default)
            if v is None or v == default:
                continue
            out[_camel(f.name)] = _dump_value(v)
        return out


def _dump_value(v: Any) -> Any:
    if isinstance(v, _Obj):
        return v.dump()
    if isinstance(v, list):
        return [_dump_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _dump_value(x) for k, x in v.items()}
    return v


def _obj(cls: type[_Obj]) -> _Parse:
    return cls.parse


@dataclass(slots=True, frozen=True, kw_only=True)
class EnvVar(_Obj):
    name: str = _f(_str())
    value: str = _f(_str(), "")


@dataclass(slots=True, frozen=True, kw_only=True)
class ContainerPort(_Obj):
    container_port: int = _f(_int(1, 65535))
    name: str | None = _f(_opt(_str()), None)
    protocol: Literal["TCP", "UDP"] = _f(_literal("TCP", "UDP"), "TCP")
    host_port: int | None = _f(_opt(_int(1, 65535)), None)


@dataclass(slots=True, frozen=True, kw_only=True)
class ResourceRequirements(_Obj):
    requests: dict[str, str | int | float] = _f(_quantities, factory=dict)
    limits: dict[str, str | int | float] = _f(_quantities, factory=dict)

    def request(self, name: str) -> int:
        """Requested amount (limits stand in for missing requests, as in Kubernetes)."""
        q = self.requests.get(name, self.limits.get(name))
        return 0 if q is None else parse_resource(name, q, field=name)

    def limit(self, name: str) -> int | None:
        q = self.limits.get(name)
        return None if q is None else parse_resource(name, q, field=name)


@dataclass(slots=True, frozen=True, kw_only=True)
class VolumeMount(_Obj):
    name: str = _f(_str())
    mount_path: str = _f(_abs_path)
    read_only: bool = _f(_bool, False)


@dataclass(slots=True, frozen=True, kw_only=True)
class HostPathVolumeSource(_Obj):
    path: str = _f(_host_path)
    type: str | None = _f(_opt(_literal("", "DirectoryOrCreate", "Directory", "FileOrCreate",
                                        "File", "Socket", "CharDevice", "BlockDevice")), None)


@dataclass(slots=True, frozen=True, kw_only=True)
class EmptyDirVolumeSource(_Obj):
    """A scratch directory that lives as long as the pod is on the node (no options yet)."""


@dataclass(slots=True, frozen=True, kw_only=True)
class KeyToPath(_Obj):
    key: str = _f(_str(min_length=1, max_length=253))
    path: str = _f(_rel_path)


@dataclass(slots=True, frozen=True, kw_only=True)
class ConfigMapVolumeSource(_Obj):
    name: str = _f(_dns_name)
    items: list[KeyToPath] | None = _f(_opt(_list(_obj(KeyToPath))), None)
    optional: bool = _f(_bool, False)


@dataclass(slots=True, frozen=True, kw_only=True)
class SecretVolumeSource(_Obj):
    secret_name: str = _f(_dns_name)
    items: list[KeyToPath] | None = _f(_opt(_list(_obj(KeyToPath))), None)
    optional: bool = _f(_bool, False)


@dataclass(slots=True, frozen=True, kw_only=True)
class Volume(_Obj):
    """A pod volume: exactly one of hostPath, emptyDir, configMap, secret."""

    name: str = _f(_dns_name)
    host_path: HostPathVolumeSource | None = _f(_opt(_obj(HostPathVolumeSource)), None)
    empty_dir: EmptyDirVolumeSource | None = _f(_opt(_obj(EmptyDirVolumeSource)), None)
    config_map: ConfigMapVolumeSource | None = _f(_opt(_obj(ConfigMapVolumeSource)), None)
    secret: SecretVolumeSource | None = _f(_opt(_obj(SecretVolumeSource)), None)

    def _check(self, path: str) -> None:
        n = sum(x is not None for x in (self.host_path, self.empty_dir, self.config_map,
                                         self.secret))
        if n != 1:
            raise _fail(path, f"volume {self.name!r} must have exactly one of hostPath, "
                              f"emptyDir, configMap, secret (has {n})")


@dataclass(slots=True, frozen=True, kw_only=True)
class ExecAction(_Obj):
    command: list[str] = _f(_list(_str(), min_length=1))


@dataclass(slots=True, frozen=True, kw_only=True)
class TCPSocketAction(_Obj):
    port: int | str = _f(_port)


@dataclass(slots=True, frozen=True, kw_only=True)
class HTTPGetAction(_Obj):
    path: str = _f(_http_path, "/")
    port: int | str = _f(_port)
    scheme: Literal["HTTP"] = _f(_literal("HTTP"), "HTTP")


@dataclass(slots=True, frozen=True, kw_only=True)
class Probe(_Obj):
    """A container probe (Kubernetes semantics); the agent runs it in the pod's network
    namespace, so it reaches the container on 127.0.0.1 as Kubernetes' probes reach the
    pod IP."""

    exec: ExecAction | None = _f(_opt(_obj(ExecAction)), None)
    tcp_socket: TCPSocketAction | None = _f(_opt(_obj(TCPSocketAction)), None)
    http_get: HTTPGetAction | None = _f(_opt(_obj(HTTPGetAction)), None)
    initial_delay_seconds: int = _f(_int(0, 86400), 0)
    period_seconds: int = _f(_int(1, 86400), 10)
    timeout_seconds: int = _f(_int(1, 3600), 1)
    failure_threshold: int = _f(_int(1, 1000), 3)
    success_threshold: int = _f(_int(1, 1000), 1)

    def _check(self, path: str) -> None:
        n = sum(x is not None for x in (self.exec, self.tcp_socket, self.http_get))
        if n != 1:
            raise _fail(path, f"a probe needs exactly one of exec, tcpSocket, httpGet (has {n})")

    def port(self) -> int | str | None:
        if self.tcp_socket is not None:
            return self.tcp_socket.port
        if self.http_get is not None:
            return self.http_get.port
        return None


CAPABILITY = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
MAX_ID = 2**32 - 2


def _localhost_profile(v: Any, path: str) -> str:
    v = _str(max_length=1024)(v, path)
    parts = v.split("/")
    if not v or v.startswith("/") or "\x00" in v or ".." in parts or "" in parts:
        raise _fail(path, f"{v!r} must be a relative path without '..' or empty parts")
    return v  # type: ignore[no-any-return]


def _capability(v: Any, path: str) -> str:
    v = _str()(v, path)
    if not CAPABILITY.match(v):
        raise _fail(path, f"{v!r} is not a capability name such as NET_ADMIN")
    return v  # type: ignore[no-any-return]


def _group(v: Any, path: str) -> int:
    if type(v) is not int:
        raise _fail(path, f"must be an integer, not {_type_name(v)}")
    if not 0 <= v <= MAX_ID:
        raise _fail(path, f"group {v} is outside 0..{MAX_ID}")
    return v


def _groups(v: Any, path: str) -> list[int]:
    out: list[int] = _list(_group)(v, path)
    if len(out) > 64:
        raise _fail(path, "must have at most 64 items")
    return out


@dataclass(slots=True, frozen=True, kw_only=True)
class SeccompProfile(_Obj):
    """Kubernetes' seccompProfile: RuntimeDefault (edgefed's default when unset),
    Unconfined (no filter; only where the policy level allows) or Localhost (a profile
    file under the node's seccomp directory, named by `localhostProfile`)."""

    type: Literal["RuntimeDefault", "Unconfined", "Localhost"] = _f(
        _literal("RuntimeDefault", "Unconfined", "Localhost"))
    localhost_profile: str | None = _f(_opt(_localhost_profile), None)

    def _check(self, path: str) -> None:
        if (self.type == "Localhost") != (self.localhost_profile is not None):
            raise _fail(path, "localhostProfile is required with type Localhost and "
                              "allowed only with it")


@dataclass(slots=True, frozen=True, kw_only=True)
class Capabilities(_Obj):
    """Capabilities added to or dropped from the runtime's default set."""

    add: list[str] = _f(_list(_capability), factory=list)
    drop: list[str] = _f(_list(_capability), factory=list)


@dataclass(slots=True, frozen=True, kw_only=True)
class SecurityContext(_Obj):
    """A container's securityContext (Kubernetes' fields edgefed implements). Unset
    fields take the pod's `securityContext`, then the runtime's safe defaults; the
    namespace's policy level (`shared.policy`) decides which values may run."""

    run_as_user: int | None = _f(_opt(_int(0, MAX_ID)), None)
    run_as_group: int | None = _f(_opt(_int(0, MAX_ID)), None)
    run_as_non_root: bool | None = _f(_opt(_bool), None)
    read_only_root_filesystem: bool | None = _f(_opt(_bool), None)
    privileged: bool | None = _f(_opt(_bool), None)
    allow_privilege_escalation: bool | None = _f(_opt(_bool), None)
    capabilities: Capabilities | None = _f(_opt(_obj(Capabilities)), None)
    seccomp_profile: SeccompProfile | None = _f(_opt(_obj(SeccompProfile)), None)

    def _check(self, path: str) -> None:
        if self.privileged and self.allow_privilege_escalation is False:
            raise _fail(path, "allowPrivilegeEscalation cannot be false when privileged "
                              "is true")

    def user(self) -> str | None:
        """The runtime's "uid[:gid]" or None (the image's user); container level only
        (`shared.policy.effective` merges in the pod's securityContext)."""
        if self.run_as_user is None:
            return None
        if self.run_as_group is None:
            return str(self.run_as_user)
        return f"{self.run_as_user}:{self.run_as_group}"


@dataclass(slots=True, frozen=True, kw_only=True)
class PodSecurityContext(_Obj):
    """A pod's securityContext: defaults for every container, plus the pod-wide groups."""

    run_as_user: int | None = _f(_opt(_int(0, MAX_ID)), None)
    run_as_group: int | None = _f(_opt(_int(0, MAX_ID)), None)
    run_as_non_root: bool | None = _f(_opt(_bool), None)
    fs_group: int | None = _f(_opt(_int(0, MAX_ID)), None)
    supplemental_groups: list[int] = _f(_groups, factory=list)
    seccomp_profile: SeccompProfile | None = _f(_opt(_obj(SeccompProfile)), None)


@dataclass(slots=True, frozen=True, kw_only=True)
class Container(_Obj):
    name: str = _f(_dns_name)
    image: str = _f(_str(min_length=1, max_length=1024))
    command: list[str] = _f(_list(_str()), factory=list)
    args: list[str] = _f(_list(_str()), factory=list)
    env: list[EnvVar] = _f(_list(_obj(EnvVar)), factory=list)
    working_dir: str | None = _f(_opt(_str()), None)
    ports: list[ContainerPort] = _f(_list(_obj(ContainerPort)), factory=list)
    resources: ResourceRequirements = _f(_obj(ResourceRequirements),
                                         factory=ResourceRequirements)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = _f(
        _literal("Always", "IfNotPresent", "Never"), "IfNotPresent")
    volume_mounts: list[VolumeMount] = _f(_list(_obj(VolumeMount)), factory=list)
    liveness_probe: Probe | None = _f(_opt(_obj(Probe)), None)
    readiness_probe: Probe | None = _f(_opt(_obj(Probe)), None)
    startup_probe: Probe | None = _f(_opt(_obj(Probe)), None)
    security_context: SecurityContext | None = _f(_opt(_obj(SecurityContext)), None)

    def _check(self, path: str) -> None:
        paths = [m.mount_path.rstrip("/") for m in self.volume_mounts]
        if len(set(paths)) != len(paths):
            raise _fail(path, f"container {self.name!r}: duplicate volumeMounts mountPath")
        names = {p.name for p in self.ports if p.name}
        for kind, probe in (("livenessProbe", self.liveness_probe),
                            ("readinessProbe", self.readiness_probe),
                            ("startupProbe", self.startup_probe)):
            port = probe.port() if probe is not None else None
            if isinstance(port, str) and port not in names:
                raise _fail(path, f"container {self.name!r}: {kind} port {port!r} names no "
                                  "container port")
            if isinstance(port, int) and not 1 <= port <= 65535:
                raise _fail(path, f"container {self.name!r}: {kind} port {port} is outside "
                                  "1..65535")
        for kind, probe in (("startupProbe", self.startup_probe),
                            ("livenessProbe", self.liveness_probe)):
            if probe is not None and probe.success_threshold != 1:
                raise _fail(path, f"container {self.name!r}: {kind} successThreshold must "
                                  "be 1")

    def probe_port(self, port: int | str) -> int:
        """A probe's port as a number (a name is looked up in `ports`)."""
        if isinstance(port, int):
            return port
        return next(p.container_port for p in self.ports if p.name == port)


@dataclass(slots=True, frozen=True, kw_only=True)
class Toleration(_Obj):
    key: str | None = _f(_opt(_str()), None)
    operator: Literal["Exists", "Equal"] = _f(_literal("Exists", "Equal"), "Equal")
    value: str | None = _f(_opt(_str()), None)
    effect: str | None = _f(_opt(_literal("NoSchedule", "PreferNoSchedule", "NoExecute")),
                            None)
    toleration_seconds: int | None = _f(_opt(_int()), None)


@dataclass(slots=True, frozen=True, kw_only=True)
class PodSpec(_Obj):
    containers: list[Container] = _f(_list(_obj(Container), min_length=1))
    restart_policy: Literal["Always", "OnFailure", "Never"] = _f(
        _literal("Always", "OnFailure", "Never"), "Always")
    node_selector: dict[str, str] = _f(_map(_str()), factory=dict)
    node_name: str | None = _f(_opt(_str()), None)
    tolerations: list[Toleration] = _f(_list(_obj(Toleration)), factory=list)
    host_network: bool = _f(_bool, False)
    host_users: bool = _f(_bool, True)
    security_context: PodSecurityContext | None = _f(_opt(_obj(PodSecurityContext)), None)
    termination_grace_period_seconds: int = _f(_int(0, 3600), 10)
    volumes: list[Volume] = _f(_list(_obj(Volume)), factory=list)

    def _check(self, path: str) -> None:
        names = [c.name for c in self.containers]
        if len(set(names)) != len(names):
            raise _fail(_at(path, "containers"), "container names must be unique within a pod")
        vols = [v.name for v in self.volumes]
        if len(set(vols)) != len(vols):
            raise _fail(path, "volume names must be unique within a pod")
        for c in self.containers:
            for m in c.volume_mounts:
                if m.name not in vols:
                    raise _fail(path, f"container {c.name!r}: volumeMount {m.name!r} names no "
                                      f"volume of the pod (volumes: {', '.join(vols) or 'none'})")
        pod = self.security_context
        for c in self.containers:
            sc = c.security_context
            user = _first(sc and sc.run_as_user, pod and pod.run_as_user)
            group = _first(sc and sc.run_as_group, pod and pod.run_as_group)
            non_root = _first(sc and sc.run_as_non_root, pod and pod.run_as_non_root)
            if group is not None and user is None:
                raise _fail(path, f"container {c.name!r}: runAsGroup needs runAsUser too "
                                  "(at pod or container level; edgefed sets both or neither)")
            if non_root and user == 0:
                raise _fail(path, f"container {c.name!r}: runAsNonRoot is true but "
                                  "runAsUser is 0")

    def volume(self, name: str) -> Volume:
        return next(v for v in self.volumes if v.name == name)

    def requests(self) -> dict[str, int]:
        """Summed requests of all containers, by resource name."""
        total: dict[str, int] = {}
        for c in self.containers:
            for name in {*c.resources.requests, *c.resources.limits}:
                total[name] = total.get(name, 0) + c.resources.request(name)
        return total


def _first(*values: Any) -> Any:
    """The first value that is not None (a container's field over its pod's)."""
    return next((v for v in values if v is not None), None)


# -- statuses (built by the edge, validated by the cloud) ----------------------------------


def _wire(obj: Any) -> dict[str, Any]:
    """camelCase keys, None left out, nested statuses rendered (pydantic's
    `model_dump(mode="json", by_alias=True, exclude_none=True)`)."""
    out: dict[str, Any] = {}
    for name in obj.__slots__:
        v = getattr(obj, name)
        if v is None:
            continue
        if isinstance(v, list):
            v = [x.to_wire() for x in v]
        elif hasattr(v, "to_wire"):
            v = v.to_wire()
        out[_camel(name)] = v
    return out


@dataclass(slots=True)
class LastState:
    """How the previous instance of a container ended (Kubernetes' lastState.terminated)."""

    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class ContainerStatus:
    name: str
    state: Literal["waiting", "running", "terminated"] = "waiting"
    ready: bool = False
    restart_count: int = 0
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    started: bool | None = None  # startup probe passed (None: not reported)
    last_state: LastState | None = None

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]


@dataclass(slots=True)
class PodStatus:
    phase: PodPhase = "Pending"
    reason: str | None = None
    message: str | None = None
    node_name: str | None = None
    container_statuses: list[ContainerStatus] = field(default_factory=list)
    revision: str | None = None
    updated_at: float | None = None
    ready: bool | None = None  # Running and every container ready (None: not reported)
    pod_ip: str | None = None  # the pod's own address (None: hostNetwork or not reported)

    def to_wire(self) -> dict[str, Any]:
        """What a report carries for this pod (`shared.models.PodStatus` validates it)."""
        return _wire(self)
