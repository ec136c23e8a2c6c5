"""The pod spec, defined once: what cloudcore validates users' pods with and what the
agent reads from a desired entry; and the statuses the agent reports.

The spec pieces (`PodSpec`, `Container`, `Volume`, `Probe`, `SecurityContext`...)
are msgspec Structs: typed, slotted, frozen, validated in C by `msgspec.convert`
(2-6x faster than the hand-written rules this replaced and 7% less heap per pod, for
0.7 MiB more RSS at import on the agent; the cloud dumps specs 6-8x faster than with
pydantic: docs/proposals/0004-fleet-reshape.md, "Measured: msgspec vs hand-written"). The
rules msgspec's type constraints cannot state (names, paths, quantities,
cross-field checks) run in each Struct's `__post_init__` through `shared.validate`.

`shared.models` (the cloud's pydantic objects) uses these same classes for
`Pod.spec` and `PodTemplate.spec` (a pydantic adapter there), so a field exists on
both sides or on neither. This module stays free of pydantic: the agent imports it.

Rules of the schema (as in Kubernetes' API): camelCase names (snake_case accepted
on input), unknown fields refused, no coercion between JSON types (a string is not
a number), and every error an `ObjectError` naming the dotted field, e.g.
`spec.containers[0].image: must be a string, not int`; an unknown field is an
`UnsupportedField` with a "did you mean" hint when a known field is close.

Statuses go the other way: the edge builds `PodStatus` / `ContainerStatus` /
`LastState` and `to_wire()` renders exactly what `shared.models.PodStatus` would dump
(camelCase, None left out), which cloudcore validates on arrival
(tests/shared/test_pods_parity.py compares the two field by field).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

from shared import validate
from shared.errors import ObjectError, UnsupportedField
from shared.quantity import parse_resource

MAX_NAME = validate.MAX_NAME
MAX_ID = validate.MAX_ID
CAPABILITY = validate.CAPABILITY

S = TypeVar("S", bound="Spec")

Port = Annotated[int, Meta(ge=1, le=65535)]
Id = Annotated[int, Meta(ge=0, le=MAX_ID)]
Quantity = str | int | float


def _rule(check: Callable[[Any], Any], value: Any, at: str) -> None:
    """Run a `shared.validate` rule on field `at` (a camelCase sub-path) of this object."""
    try:
        check(value)
    except ValueError as exc:
        raise ValueError(f"@{at}: {exc}") from None


class Spec(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True,
           omit_defaults=True):
    """Base of the pod spec pieces: `parse(raw, path)`, `dump()` and pydantic's names."""

    @classmethod
    def parse(cls: type[S], raw: Any, path: str = "") -> S:
        """`raw` (decoded JSON / msgpack, or an instance) -> this type.

        Raises ObjectError (UnsupportedField for an unknown field) naming the field,
        prefixed with `path`.
        """
        if isinstance(raw, cls):
            return raw
        try:
            return msgspec.convert(raw, cls)
        except msgspec.ValidationError as exc:
            err = str(exc)
        if isinstance(raw, dict):  # snake_case names are accepted too (pydantic did)
            fixed = _camel_keys(_info(cls), raw)
            if fixed is not raw:
                try:
                    return msgspec.convert(fixed, cls)
                except msgspec.ValidationError as exc:
                    err = str(exc)
        raise _object_error(cls, err, path)

    @classmethod
    def model_validate(cls: type[S], raw: Any, *, strict: bool | None = None) -> S:
        """pydantic's name for `parse` (there is no lax mode: `strict` is ignored)."""
        del strict
        return cls.parse(raw)

    def dump(self) -> dict[str, Any]:
        """JSON-able dict with Kubernetes field names, defaults and None left out."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        self._tidy(out)
        return out

    def _tidy(self, out: dict[str, Any]) -> None:
        """Leave out what msgspec kept: a Struct default equal to but not the default
        instance (msgspec compares those by identity). Overridden where that occurs."""

    def model_dump(self, *, mode: str = "python", by_alias: bool | None = None,
                   exclude_none: bool = False, exclude_defaults: bool = False) -> dict[str, Any]:
        """What pydantic's `model_dump` with these arguments gave for the old models:
        snake_case names unless `by_alias`, every field unless excluded."""
        del mode  # every value is JSON-able already
        if by_alias and exclude_defaults:
            return self.dump()
        out: dict[str, Any] = _plain(self, by_alias=bool(by_alias), exclude_none=exclude_none,
                                     exclude_defaults=exclude_defaults)
        return out


_FIELDS: dict[type, tuple[msgspec.structs.FieldInfo, ...]] = {}


def _fields(cls: type) -> tuple[msgspec.structs.FieldInfo, ...]:
    """The fields of a spec type, looked up once per type: `msgspec.structs.fields`
    evaluates the type annotations on every call (milliseconds for a pod spec)."""
    out = _FIELDS.get(cls)
    if out is None:
        out = _FIELDS[cls] = msgspec.structs.fields(cls)
    return out


def _plain(v: Any, *, by_alias: bool, exclude_none: bool, exclude_defaults: bool) -> Any:
    if isinstance(v, Spec):
        out: dict[str, Any] = {}
        for f in _fields(type(v)):
            x = getattr(v, f.name)
            if x is None and exclude_none:
                continue
            if exclude_defaults:
                default = (f.default_factory() if f.default_factory is not msgspec.NODEFAULT
                           else f.default)
                if default is not msgspec.NODEFAULT and x == default:
                    continue
            out[f.encode_name if by_alias else f.name] = _plain(
                x, by_alias=by_alias, exclude_none=exclude_none,
                exclude_defaults=exclude_defaults)
        return out
    if isinstance(v, list):
        return [_plain(x, by_alias=by_alias, exclude_none=exclude_none,
                       exclude_defaults=exclude_defaults) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x, by_alias=by_alias, exclude_none=exclude_none,
                          exclude_defaults=exclude_defaults) for k, x in v.items()}
    return v


# -- input names and error messages --------------------------------------------------------


@functools.cache
def _info(cls: type[Spec]) -> mi.Type:
    """msgspec's description of a spec type (built once per type)."""
    return mi.type_info(cls)


_NAMES: dict[type, dict[str, mi.Field]] = {}


def _names(t: mi.StructType) -> dict[str, mi.Field]:
    """Every name a field may be given by (camelCase and snake_case) -> the field."""
    out = _NAMES.get(t.cls)
    if out is None:
        out = {f.name: f for f in t.fields}
        out.update({f.encode_name: f for f in t.fields})
        _NAMES[t.cls] = out
    return out


def _camel_keys(t: mi.Type, v: Any) -> Any:
    """`v` with snake_case field names renamed to camelCase, recursively (the same
    object when nothing changed). The camelCase name wins when both are given."""
    if isinstance(t, mi.UnionType):
        for u in t.types:
            if (isinstance(u, mi.StructType) and isinstance(v, dict)) or (
                    isinstance(u, mi.ListType) and isinstance(v, list)):
                return _camel_keys(u, v)
        return v
    if isinstance(t, mi.ListType) and isinstance(v, list):
        items = [_camel_keys(t.item_type, x) for x in v]
        return v if all(a is b for a, b in zip(items, v, strict=True)) else items
    if isinstance(t, mi.StructType) and isinstance(v, dict):
        names = _names(t)
        out: dict[Any, Any] = {}
        changed = False
        for k, x in v.items():
            f = names.get(k) if isinstance(k, str) else None
            if f is None:
                out[k] = x
                continue
            y = _camel_keys(f.type, x)
            if k != f.encode_name:
                changed = True
                if f.encode_name in v:
                    continue
            changed = changed or y is not x
            out[f.encode_name] = y
        return out if changed else v
    return v


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<loc>[^`]*)`)?$", re.DOTALL)
_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")
_BOUND = re.compile(r"^Expected `(?P<t>int|float)` (?P<op>>=|<=|>|<) (?P<n>\S+)$")
_LENGTH = re.compile(r"^Expected `(?P<t>str|array|object)` of length (?P<op>>=|<=) (?P<n>\d+)$")
_WANT = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
         "array": "a list", "object": "a mapping", "null": "null"}
_GOT = {"array": "list", "object": "dict", "str": "str", "int": "int", "float": "float",
        "bool": "bool", "null": "null"}


def _type_at(t: mi.Type, loc: str) -> mi.Type | None:
    """The schema type at `loc` (".containers[0].image") under `t`, or None."""
    for m in _PART.finditer(loc):
        name, index = m.group(1), m.group(2)
        while isinstance(t, mi.UnionType):
            t = next((u for u in t.types if not isinstance(u, mi.NoneType)), t)
            if isinstance(t, mi.UnionType):
                return None
        if name is not None and isinstance(t, mi.StructType):
            f = _names(t).get(name)
            if f is None:
                return None
            t = f.type
        elif index is not None and isinstance(t, mi.ListType):
            t = t.item_type
        elif name is None and index is None and isinstance(t, mi.DictType):
            t = t.value_type
        else:
            return None
    while isinstance(t, mi.UnionType):  # a field's own type, None left out
        rest = [u for u in t.types if not isinstance(u, mi.NoneType)]
        if len(rest) != 1:
            return t
        t = rest[0]
    return t


def _dotted(loc: str) -> str:
    """msgspec's location (".a[0].b", dict keys as "[...]") as our dotted field."""
    return loc.replace("[...]", "").lstrip(".")


def _join(path: str, sub: str) -> str:
    if not sub:
        return path
    if not path:
        return sub
    return f"{path}{sub}" if sub.startswith("[") else f"{path}.{sub}"


def _object_error(cls: type[Spec], text: str, path: str) -> ObjectError:
    """msgspec's ValidationError text -> our ObjectError naming the dotted field."""
    m = _AT.match(text)
    msg, loc = (m.group("msg"), m.group("loc") or "") if m else (text, "")
    root = _info(cls)
    at = _dotted(loc)
    if msg.startswith("@"):  # a rule of `shared.validate` on a sub-field (`_rule`)
        sub, _, msg = msg[1:].partition(": ")
        at = _join(at, sub)
    elif (u := re.match(r"^Object contains unknown field `(.*)`$", msg)) is not None:
        name = u.group(1)
        where = _join(path, _join(at, name))
        parent = _type_at(root, loc)
        known = [f.encode_name for f in parent.fields] if isinstance(
            parent, mi.StructType) else []
        why = REFUSED.get(name)
        if why is not None:
            return UnsupportedField(f"{where}: not supported by edgefed: {why}", field=where)
        import difflib  # only for this hint: the agent never loads it (issue 16)

        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return UnsupportedField(f"{where}: field is not supported by edgefed{hint}",
                                field=where, hint=hint)
    elif (r := re.match(r"^Object missing required field `(.*)`$", msg)) is not None:
        at, msg = _join(at, r.group(1)), "field required"
    elif (e := _EXPECTED.match(msg)) is not None:
        wants = {w.strip() for w in e["want"].split("|")}
        want = ("a quantity (string or number)" if wants == {"str", "int", "float"}
                else "a port number or name" if wants == {"str", "int"}
                else " or ".join(_WANT.get(w, w) for w in sorted(wants)))
        msg = f"must be {want}, not {_GOT.get(e['got'], e['got'])}"
    elif (b := _BOUND.match(msg)) is not None:
        t = _type_at(root, loc)
        lo, hi = (t.ge, t.le) if isinstance(t, mi.IntType) else (None, None)
        msg = (f"must be within {lo}..{hi}" if lo is not None and hi is not None
               else f"must be {b['op']} {b['n']}")
    elif (n := _LENGTH.match(msg)) is not None:
        unit = "character(s)" if n["t"] == "str" else "item(s)"
        msg = (f"must have at least {n['n']} {unit}" if n["op"] == ">="
               else f"must have at most {n['n']} {unit.replace('(s)', 's')}")
    elif msg.startswith("Invalid enum value "):
        t = _type_at(root, loc)
        got = msg.removeprefix("Invalid enum value ")
        if isinstance(t, mi.LiteralType):
            msg = f"must be one of {', '.join(map(repr, t.values))}, not {got}"
    where = _join(path, at)
    return ObjectError(f"{where}: {msg}" if where else msg, field=where or None)


REFUSED: dict[str, str] = {
    "seLinuxOptions": "the edge runtime applies no SELinux labels; remove it",
    "seLinuxChangePolicy": "the edge runtime applies no SELinux labels; remove it",
    "windowsOptions": "Windows containers do not run at the edge; remove it",
    "appArmorProfile": "the edge runtime applies no AppArmor profile (seccomp, capabilities "
                       "and no_new_privileges confine containers); remove it",
    "supplementalGroupsPolicy": "the image's groups are not merged (the default, Merge, "
                                "is not implemented); list the groups in "
                                "supplementalGroups",
    "matchLabelKeys": "not implemented (rollout-aware pod affinity); state the labels in "
                      "labelSelector",
    "mismatchLabelKeys": "not implemented; state the labels in labelSelector",
}
"""Kubernetes fields edgefed knows and refuses, with the reason given for each (an
unknown field gets "did you mean" instead)."""


# -- the spec --------------------------------------------------------------------------------


class ObjectFieldSelector(Spec, kw_only=True, frozen=True):
    """`fieldRef`: a field of the pod (`FIELD_PATHS`, or a label / annotation by key)."""

    field_path: str
    api_version: Literal["v1"] = "v1"

    def __post_init__(self) -> None:
        _rule(validate.field_path, self.field_path, "fieldPath")


class ResourceFieldSelector(Spec, kw_only=True, frozen=True):
    """`resourceFieldRef`: a container's cpu / memory request or limit, divided by
    `divisor` and rounded up (an unset limit is the node's capacity, as in Kubernetes)."""

    resource: Literal["limits.cpu", "limits.memory", "requests.cpu", "requests.memory"]
    container_name: str | None = None
    divisor: Quantity = 1

    def __post_init__(self) -> None:
        _rule(lambda d: validate.divisor(self.resource.partition(".")[2], d), self.divisor,
              "divisor")


class ConfigMapKeySelector(Spec, kw_only=True, frozen=True):
    name: str
    key: str
    optional: bool = False

    def __post_init__(self) -> None:
        _rule(validate.dns_name, self.name, "name")
        _rule(validate.data_key, self.key, "key")


class SecretKeySelector(Spec, kw_only=True, frozen=True):
    name: str
    key: str
    optional: bool = False

    def __post_init__(self) -> None:
        _rule(validate.dns_name, self.name, "name")
        _rule(validate.data_key, self.key, "key")


class EnvVarSource(Spec, kw_only=True, frozen=True):
    """Where an environment variable's value comes from: exactly one source."""

    field_ref: ObjectFieldSelector | None = None
    resource_field_ref: ResourceFieldSelector | None = None
    config_map_key_ref: ConfigMapKeySelector | None = None
    secret_key_ref: SecretKeySelector | None = None

    def __post_init__(self) -> None:
        n = sum(x is not None for x in (self.field_ref, self.resource_field_ref,
                                         self.config_map_key_ref, self.secret_key_ref))
        if n != 1:
            raise ValueError("valueFrom must have exactly one of fieldRef, resourceFieldRef, "
                             f"configMapKeyRef, secretKeyRef (has {n})")


class EnvVar(Spec, kw_only=True, frozen=True):
    """`$(NAME)` in `value` (and in the container's command and args) is replaced by an
    earlier variable's value, as in Kubernetes; `$$` is a literal `$`."""

    name: Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
    value: str = ""
    value_from: EnvVarSource | None = None

    def __post_init__(self) -> None:
        _rule(validate.env_name, self.name, "name")
        if self.value and self.value_from is not None:
            raise ValueError(f"env {self.name!r}: value and valueFrom cannot both be set")


class ConfigMapEnvSource(Spec, kw_only=True, frozen=True):
    name: str
    optional: bool = False

    def __post_init__(self) -> None:
        _rule(validate.dns_name, self.name, "name")


class SecretEnvSource(Spec, kw_only=True, frozen=True):
    name: str
    optional: bool = False

    def __post_init__(self) -> None:
        _rule(validate.dns_name, self.name, "name")


class EnvFromSource(Spec, kw_only=True, frozen=True):
    """Every key of a ConfigMap or Secret as a variable (`prefix` + key); keys that are
    not valid variable names are skipped, as Kubernetes does."""

    prefix: Annotated[str, Meta(max_length=MAX_NAME)] = ""
    config_map_ref: ConfigMapEnvSource | None = None
    secret_ref: SecretEnvSource | None = None

    def __post_init__(self) -> None:
        if self.prefix:
            _rule(validate.env_name, self.prefix, "prefix")
        if (self.config_map_ref is None) == (self.secret_ref is None):
            raise ValueError("envFrom needs exactly one of configMapRef, secretRef")


class ContainerPort(Spec, kw_only=True, frozen=True):
    container_port: Port
    name: str | None = None
    protocol: Literal["TCP", "UDP"] = "TCP"
    host_port: Port | None = None


class ResourceRequirements(Spec, kw_only=True, frozen=True):
    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}

    def __post_init__(self) -> None:
        _rule(validate.quantities, self.requests, "requests")
        _rule(validate.quantities, self.limits, "limits")

    def request(self, name: str) -> int:
        """Requested amount (limits stand in for missing requests, as in Kubernetes)."""
        q = self.requests.get(name, self.limits.get(name))
        return 0 if q is None else parse_resource(name, q, field=name)

    def limit(self, name: str) -> int | None:
        q = self.limits.get(name)
        return None if q is None else parse_resource(name, q, field=name)


class VolumeMount(Spec, kw_only=True, frozen=True):
    """Where a pod volume appears in a container (`subPath` is not supported)."""

    name: str
    mount_path: str
    read_only: bool = False
    mount_propagation: Literal["None", "HostToContainer", "Bidirectional"] | None = None
    """The bind's propagation: None (unset) rprivate, HostToContainer rslave,
    Bidirectional rshared (privileged containers only, as in Kubernetes)."""

    def __post_init__(self) -> None:
        _rule(validate.abs_path, self.mount_path, "mountPath")


class HostPathVolumeSource(Spec, kw_only=True, frozen=True):
    path: str
    type: Literal["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket",
                  "CharDevice", "BlockDevice"] | None = None

    def __post_init__(self) -> None:
        _rule(validate.host_path, self.path, "path")


class EmptyDirVolumeSource(Spec, kw_only=True, frozen=True):
    """A scratch directory that lives as long as the pod is on the node (no options yet)."""


class KeyToPath(Spec, kw_only=True, frozen=True):
    key: Annotated[str, Meta(min_length=1, max_length=253)]
    path: Annotated[str, Meta(max_length=1024)]

    def __post_init__(self) -> None:
        _rule(validate.rel_path, self.path, "path")


class ConfigMapVolumeSource(Spec, kw_only=True, frozen=True):
    name: str
    items: list[KeyToPath] | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        _rule(validate.dns_name, self.name, "name")


class SecretVolumeSource(Spec, kw_only=True, frozen=True):
    secret_name: str
    items: list[KeyToPath] | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        _rule(validate.dns_name, self.secret_name, "secretName")


class Volume(Spec, kw_only=True, frozen=True):
    """A pod volume: exactly one of hostPath, emptyDir, configMap, secret."""

    name: str
    host_path: HostPathVolumeSource | None = None
    empty_dir: EmptyDirVolumeSource | None = None
    config_map: ConfigMapVolumeSource | None = None
    secret: SecretVolumeSource | None = None

    def __post_init__(self) -> None:
        _rule(validate.dns_name, self.name, "name")
        n = sum(x is not None for x in (self.host_path, self.empty_dir, self.config_map,
                                         self.secret))
        if n != 1:
            raise ValueError(f"volume {self.name!r} must have exactly one of hostPath, "
                             f"emptyDir, configMap, secret (has {n})")


class ExecAction(Spec, kw_only=True, frozen=True):
    command: Annotated[list[str], Meta(min_length=1)]


class TCPSocketAction(Spec, kw_only=True, frozen=True):
    port: int | str


class HTTPGetAction(Spec, kw_only=True, frozen=True):
    path: str = "/"
    port: int | str
    scheme: Literal["HTTP"] = "HTTP"

    def __post_init__(self) -> None:
        _rule(validate.http_path, self.path, "path")


class Probe(Spec, kw_only=True, frozen=True):
    """A container probe (Kubernetes semantics); the agent runs it in the pod's network
    namespace, so it reaches the container on 127.0.0.1 as Kubernetes' probes reach the
    pod IP."""

    exec: ExecAction | None = None
    tcp_socket: TCPSocketAction | None = None
    http_get: HTTPGetAction | None = None
    initial_delay_seconds: Annotated[int, Meta(ge=0, le=86400)] = 0
    period_seconds: Annotated[int, Meta(ge=1, le=86400)] = 10
    timeout_seconds: Annotated[int, Meta(ge=1, le=3600)] = 1
    failure_threshold: Annotated[int, Meta(ge=1, le=1000)] = 3
    success_threshold: Annotated[int, Meta(ge=1, le=1000)] = 1

    def __post_init__(self) -> None:
        n = sum(x is not None for x in (self.exec, self.tcp_socket, self.http_get))
        if n != 1:
            raise ValueError(f"a probe needs exactly one of exec, tcpSocket, httpGet (has {n})")

    def port(self) -> int | str | None:
        if self.tcp_socket is not None:
            return self.tcp_socket.port
        if self.http_get is not None:
            return self.http_get.port
        return None


class SeccompProfile(Spec, kw_only=True, frozen=True):
    """Kubernetes' seccompProfile: RuntimeDefault (edgefed's default when unset),
    Unconfined (no filter; only where the policy level allows) or Localhost (a profile
    file under the node's seccomp directory, named by `localhostProfile`)."""

    type: Literal["RuntimeDefault", "Unconfined", "Localhost"]
    localhost_profile: Annotated[str, Meta(max_length=1024)] | None = None

    def __post_init__(self) -> None:
        if self.localhost_profile is not None:
            _rule(validate.rel_path, self.localhost_profile, "localhostProfile")
        if (self.type == "Localhost") != (self.localhost_profile is not None):
            raise ValueError("localhostProfile is required with type Localhost and "
                             "allowed only with it")


class Capabilities(Spec, kw_only=True, frozen=True):
    """Capabilities added to or dropped from the runtime's default set."""

    add: list[str] = []
    drop: list[str] = []

    def __post_init__(self) -> None:
        for name in self.add:
            _rule(validate.capability, name, "add")
        for name in self.drop:
            _rule(validate.capability, name, "drop")


class SecurityContext(Spec, kw_only=True, frozen=True):
    """A container's securityContext (Kubernetes' fields edgefed implements). Unset
    fields take the pod's `securityContext`, then the runtime's safe defaults; the
    namespace's policy level (`shared.policy`) decides which values may run."""

    run_as_user: Id | None = None
    run_as_group: Id | None = None
    run_as_non_root: bool | None = None
    read_only_root_filesystem: bool | None = None
    privileged: bool | None = None
    allow_privilege_escalation: bool | None = None
    capabilities: Capabilities | None = None
    seccomp_profile: SeccompProfile | None = None
    proc_mount: Literal["Default", "Unmasked"] | None = None
    """Unmasked: /proc without the masked and read-only paths (needs hostUsers: false,
    as in Kubernetes; only where the policy level allows)."""

    def __post_init__(self) -> None:
        if self.privileged and self.allow_privilege_escalation is False:
            raise ValueError("allowPrivilegeEscalation cannot be false when privileged "
                             "is true")

    def user(self) -> str | None:
        """The runtime's "uid[:gid]" or None (the image's user); container level only
        (`shared.policy.effective` merges in the pod's securityContext)."""
        if self.run_as_user is None:
            return None
        if self.run_as_group is None:
            return str(self.run_as_user)
        return f"{self.run_as_user}:{self.run_as_group}"


class Sysctl(Spec, kw_only=True, frozen=True):
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    value: Annotated[str, Meta(max_length=4096)]

    def __post_init__(self) -> None:
        _rule(validate.sysctl, self.name, "name")


class PodSecurityContext(Spec, kw_only=True, frozen=True):
    """A pod's securityContext: defaults for every container, plus the pod-wide groups
    and sysctls."""

    run_as_user: Id | None = None
    run_as_group: Id | None = None
    run_as_non_root: bool | None = None
    fs_group: Id | None = None
    fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = None
    """Accepted: the agent never changes a volume's ownership (fsGroup is a supplemental
    group of every container), so both values mean the same."""
    supplemental_groups: Annotated[list[int], Meta(max_length=64)] = []
    seccomp_profile: SeccompProfile | None = None
    sysctls: Annotated[list[Sysctl], Meta(max_length=64)] = []
    """Namespaced kernel parameters set in the pod's containers (the policy level decides
    which: baseline allows Kubernetes' safe set)."""

    def __post_init__(self) -> None:
        for g in self.supplemental_groups:
            _rule(validate.group_id, g, "supplementalGroups")
        validate.unique([x.name for x in self.sysctls], "sysctl names")


class Container(Spec, kw_only=True, frozen=True):
    name: str
    image: Annotated[str, Meta(min_length=1, max_length=1024)]
    command: list[str] = []
    args: list[str] = []
    env: list[EnvVar] = []
    env_from: list[EnvFromSource] = []
    working_dir: str | None = None
    ports: list[ContainerPort] = []
    resources: ResourceRequirements = ResourceRequirements()
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    volume_mounts: list[VolumeMount] = []
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    security_context: SecurityContext | None = None
    restart_policy: Literal["Always"] | None = None
    """Only on an init container: `Always` makes it a sidecar (started in order with
    the init containers, kept running beside the app containers)."""

    def __post_init__(self) -> None:
        _rule(validate.dns_name, self.name, "name")
        paths = [m.mount_path.rstrip("/") for m in self.volume_mounts]
        if len(set(paths)) != len(paths):
            raise ValueError(f"container {self.name!r}: duplicate volumeMounts mountPath")
        privileged = self.security_context is not None and self.security_context.privileged
        for i, m in enumerate(self.volume_mounts):
            if m.mount_propagation == "Bidirectional" and not privileged:
                raise ValueError(f"@volumeMounts[{i}].mountPropagation: Bidirectional is "
                                 "allowed only in a privileged container")
        names = {p.name for p in self.ports if p.name}
        for kind, probe in (("livenessProbe", self.liveness_probe),
                            ("readinessProbe", self.readiness_probe),
                            ("startupProbe", self.startup_probe)):
            port = probe.port() if probe is not None else None
            if isinstance(port, str) and port not in names:
                raise ValueError(f"container {self.name!r}: {kind} port {port!r} names no "
                                 "container port")
            if isinstance(port, int) and not 1 <= port <= 65535:
                raise ValueError(f"container {self.name!r}: {kind} port {port} is outside "
                                 "1..65535")
        for kind, probe in (("startupProbe", self.startup_probe),
                            ("livenessProbe", self.liveness_probe)):
            if probe is not None and probe.success_threshold != 1:
                raise ValueError(f"container {self.name!r}: {kind} successThreshold must "
                                 "be 1")

    def _tidy(self, out: dict[str, Any]) -> None:
        if out.get("resources") == {}:
            del out["resources"]

    def probe_port(self, port: int | str) -> int:
        """A probe's port as a number (a name is looked up in `ports`)."""
        if isinstance(port, int):
            return port
        return next(p.container_port for p in self.ports if p.name == port)


class Toleration(Spec, kw_only=True, frozen=True):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class PodDNSConfigOption(Spec, kw_only=True, frozen=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    value: Annotated[str, Meta(max_length=256)] | None = None

    def __post_init__(self) -> None:
        _rule(validate.resolv_word, self.name, "name")
        if self.value is not None:
            _rule(validate.resolv_word, self.value, "value")


class PodDNSConfig(Spec, kw_only=True, frozen=True):
    """Written into the pod's /etc/resolv.conf: merged over the node's (nameservers and
    searches appended, options by name), or alone with `dnsPolicy: None`."""

    nameservers: Annotated[list[str], Meta(max_length=3)] = []
    searches: Annotated[list[str], Meta(max_length=32)] = []
    options: list[PodDNSConfigOption] = []

    def __post_init__(self) -> None:
        for n in self.nameservers:
            _rule(validate.ip_address, n, "nameservers")
        for d in self.searches:
            _rule(validate.search_domain, d, "searches")


class LocalObjectReference(Spec, kw_only=True, frozen=True):
    name: str

    def __post_init__(self) -> None:
        _rule(validate.dns_name, self.name, "name")


# -- affinity (Kubernetes' node affinity and inter-pod (anti-)affinity) ----------------------

HOSTNAME_KEY = "kubernetes.io/hostname"
"""The topology key of one node per domain; a node without the label is its own domain
under its name (cloudcore sets the label to the node's name)."""
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_INTEGER = re.compile(r"^[-+]?[0-9]{1,18}$")


def _label_key(v: str) -> str:
    prefix, slash, name = v.rpartition("/")
    if (slash and not _LABEL_PREFIX.match(prefix)) or not _LABEL_NAME.match(name):
        raise ValueError(f"{v!r} is not a label key (an optional DNS prefix and '/', then "
                         "1-63 of [A-Za-z0-9-_.], starting and ending alphanumeric)")
    return v


def _label_value(v: str) -> str:
    if not _LABEL_VALUE.match(v):
        raise ValueError(f"{v!r} is not a label value (at most 63 of [A-Za-z0-9-_.], "
                         "starting and ending alphanumeric)")
    return v


def _integer(v: str) -> int | None:
    return int(v) if _INTEGER.match(v) else None


class NodeSelectorRequirement(Spec, kw_only=True, frozen=True):
    """One expression of a node selector term: a node label (`matchExpressions`) or a
    node field (`matchFields`, only `metadata.name`) against `values`. In/NotIn take
    one or more values, Exists/DoesNotExist none, Gt/Lt one integer (the label must be
    an integer greater / less than it). NotIn and DoesNotExist match a node without
    the label, as in Kubernetes."""

    key: Annotated[str, Meta(min_length=1, max_length=317)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: Annotated[list[str], Meta(max_length=1000)] = []

    def __post_init__(self) -> None:
        op, n = self.operator, len(self.values)
        if op in ("In", "NotIn") and n == 0:
            raise ValueError(f"@values: operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and n:
            raise ValueError(f"@values: operator {op} takes no values (has {n})")
        if op in ("Gt", "Lt"):
            if n != 1:
                raise ValueError(f"@values: operator {op} takes exactly one value (has {n})")
            if _integer(self.values[0]) is None:
                raise ValueError(f"@values: operator {op} compares integers, "
                                 f"{self.values[0]!r} is not one")

    def matches(self, value: str | None) -> bool:
        """Whether a node whose label (or field) `key` is `value` (None: absent) matches."""
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        have = _integer(value) if value is not None else None
        if have is None:
            return False
        want = int(self.values[0])
        return have > want if op == "Gt" else have < want

    def describe(self) -> str:
        """`zone In [a, b]`, `gpu Exists`, `cores Gt 4`."""
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{self.key} {self.operator}"
        if self.operator in ("Gt", "Lt"):
            return f"{self.key} {self.operator} {self.values[0]}"
        return f"{self.key} {self.operator} [{', '.join(self.values)}]"


class NodeSelectorTerm(Spec, kw_only=True, frozen=True):
    """Every expression must match (AND). A term with none matches no node, as in
    Kubernetes."""

    match_expressions: list[NodeSelectorRequirement] = []
    match_fields: list[NodeSelectorRequirement] = []

    def __post_init__(self) -> None:
        for i, r in enumerate(self.match_expressions):
            _rule(_label_key, r.key, f"matchExpressions[{i}].key")
            if r.operator in ("In", "NotIn"):
                for v in r.values:
                    _rule(_label_value, v, f"matchExpressions[{i}].values")
        for i, r in enumerate(self.match_fields):
            if r.key != "metadata.name":
                raise ValueError(f"@matchFields[{i}].key: only metadata.name is a node field "
                                 f"to match, not {r.key!r}")
            if r.operator not in ("In", "NotIn") or len(r.values) != 1:
                raise ValueError(f"@matchFields[{i}]: metadata.name takes operator In or "
                                 "NotIn with exactly one value, as in Kubernetes")

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        if not self.match_expressions and not self.match_fields:
            return False
        return (all(r.matches(labels.get(r.key)) for r in self.match_expressions)
                and all(r.matches(name) for r in self.match_fields))

    def describe(self) -> str:
        parts = [r.describe() for r in (*self.match_expressions, *self.match_fields)]
        return ", ".join(parts) or "(empty term: matches no node)"


class NodeSelector(Spec, kw_only=True, frozen=True):
    """Required node affinity: a node must match one of the terms (OR)."""

    node_selector_terms: Annotated[list[NodeSelectorTerm], Meta(min_length=1, max_length=100)]

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        return any(t.matches(labels, name) for t in self.node_selector_terms)

    def describe(self) -> str:
        """The terms in one line (at most about 160 characters)."""
        text = " or ".join(t.describe() for t in self.node_selector_terms)
        return text if len(text) <= 160 else text[:157] + "..."


class PreferredSchedulingTerm(Spec, kw_only=True, frozen=True):
    """A node matching `preference` scores `weight` (1-100) more."""

    weight: Annotated[int, Meta(ge=1, le=100)]
    preference: NodeSelectorTerm


class NodeAffinity(Spec, kw_only=True, frozen=True):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    """Placement only: a running pod stays when its node's labels change."""
    preferred_during_scheduling_ignored_during_execution: Annotated[
        list[PreferredSchedulingTerm], Meta(max_length=100)] = []

    def score(self, labels: Mapping[str, str], name: str) -> float:
        """0..100: the share of the preferred terms' weight that the node matches (0
        without preferred terms)."""
        terms = self.preferred_during_scheduling_ignored_during_execution
        total = sum(t.weight for t in terms)
        if not total:
            return 0.0
        got = sum(t.weight for t in terms if t.preference.matches(labels, name))
        return 100.0 * got / total


class LabelSelectorRequirement(Spec, kw_only=True, frozen=True):
    """In/NotIn take one or more values, Exists/DoesNotExist none; NotIn and
    DoesNotExist match an object without the label."""

    key: Annotated[str, Meta(min_length=1, max_length=317)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: Annotated[list[str], Meta(max_length=1000)] = []

    def __post_init__(self) -> None:
        _rule(_label_key, self.key, "key")
        n = len(self.values)
        if self.operator in ("In", "NotIn"):
            if not n:
                raise ValueError(f"@values: operator {self.operator} needs at least one value")
            for v in self.values:
                _rule(_label_value, v, "values")
        elif n:
            raise ValueError(f"@values: operator {self.operator} takes no values (has {n})")

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        return (value is not None) == (op == "Exists")


class AffinitySelector(Spec, kw_only=True, frozen=True):
    """Kubernetes' LabelSelector in an affinity term (`labelSelector`,
    `namespaceSelector`): every `matchLabels` pair and every expression must match; an
    empty selector matches every object."""

    match_labels: Mapping[str, str] = {}
    match_expressions: list[LabelSelectorRequirement] = []

    def __post_init__(self) -> None:
        for k, v in self.match_labels.items():
            _rule(_label_key, k, "matchLabels")
            _rule(_label_value, v, "matchLabels")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels.items())
                and all(r.matches(labels) for r in self.match_expressions))

    def describe(self) -> str:
        """`app=web`, `app In [a, b]`; `any pod` when empty."""
        parts = [f"{k}={v}" for k, v in self.match_labels.items()]
        for r in self.match_expressions:
            parts.append(f"{r.key} {r.operator}" + (f" [{', '.join(r.values)}]"
                                                     if r.values else ""))
        return ", ".join(parts) or "any pod"


class PodAffinityTerm(Spec, kw_only=True, frozen=True):
    """The pods `labelSelector` selects (none without one, as in Kubernetes) in the
    namespaces of `namespaces` and `namespaceSelector` (the pod's own namespace when
    both are unset; `namespaceSelector: {}` is every namespace), counted per topology
    domain: the nodes that share the value of node label `topologyKey`
    (`kubernetes.io/hostname`: each node on its own)."""

    topology_key: Annotated[str, Meta(min_length=1, max_length=317)]
    label_selector: AffinitySelector | None = None
    namespaces: list[str] = []
    namespace_selector: AffinitySelector | None = None

    def __post_init__(self) -> None:
        _rule(_label_key, self.topology_key, "topologyKey")
        for ns in self.namespaces:
            _rule(validate.dns_name, ns, "namespaces")

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether the label selector selects a pod with `labels` (its namespace is the
        caller's to check)."""
        return self.label_selector is not None and self.label_selector.matches(labels)

    def describe(self) -> str:
        return "no pod" if self.label_selector is None else self.label_selector.describe()


class WeightedPodAffinityTerm(Spec, kw_only=True, frozen=True):
    weight: Annotated[int, Meta(ge=1, le=100)]
    pod_affinity_term: PodAffinityTerm


class PodAffinity(Spec, kw_only=True, frozen=True):
    """`podAffinity` (near the pods the terms select) and `podAntiAffinity` (away from
    them) have this one shape."""

    required_during_scheduling_ignored_during_execution: Annotated[
        list[PodAffinityTerm], Meta(max_length=100)] = []
    preferred_during_scheduling_ignored_during_execution: Annotated[
        list[WeightedPodAffinityTerm], Meta(max_length=100)] = []


class Affinity(Spec, kw_only=True, frozen=True):
    """Where the scheduler may put the pod, beyond `nodeSelector` (docs/pods.md)."""

    node_affinity: NodeAffinity | None = None
    pod_affinity: PodAffinity | None = None
    pod_anti_affinity: PodAffinity | None = None

    def required_nodes(self) -> NodeSelector | None:
        na = self.node_affinity
        return na.required_during_scheduling_ignored_during_execution if na else None

    def has_pod_terms(self) -> bool:
        """Whether any inter-pod term (required or preferred) is set."""
        return any(p is not None and (p.required_during_scheduling_ignored_during_execution
                                      or p.preferred_during_scheduling_ignored_during_execution)
                   for p in (self.pod_affinity, self.pod_anti_affinity))

    def pod_terms(self) -> list[PodAffinityTerm]:
        """Every inter-pod term, required and preferred, affinity and anti-affinity."""
        out: list[PodAffinityTerm] = []
        for p in (self.pod_affinity, self.pod_anti_affinity):
            if p is not None:
                out += p.required_during_scheduling_ignored_during_execution
                out += [w.pod_affinity_term
                        for w in p.preferred_during_scheduling_ignored_during_execution]
        return out

    def required_anti(self) -> list[PodAffinityTerm]:
        p = self.pod_anti_affinity
        return p.required_during_scheduling_ignored_during_execution if p else []


class PodSpec(Spec, kw_only=True, frozen=True):
    containers: Annotated[list[Container], Meta(min_length=1)]
    init_containers: list[Container] = []
    """Run in order, each to completion, before the app containers (a sidecar, with
    `restartPolicy: Always`, is started and kept running instead)."""
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    node_selector: dict[str, str] = {}
    node_name: str | None = None
    tolerations: list[Toleration] = []
    host_network: bool = False
    """Share the node's network namespace (only where the policy level allows); false:
    the pod gets its own network namespace and address (status.podIP)."""
    host_users: bool = True
    """Kubernetes' default: the pod's user ids are the host's. false: a user namespace
    maps the pod's ids (root included) to an unprivileged range of the host's."""
    security_context: PodSecurityContext | None = None
    service_account_name: str | None = None
    """Recorded (an env `fieldRef` reads it); edgefed has no service accounts: no token
    is mounted (docs/pods.md)."""
    automount_service_account_token: bool | None = None
    """Recorded; no token is ever mounted (the pod's status message says so)."""
    priority_class_name: str | None = None
    """The PriorityClass whose value the pod gets as `priority` (cloudcore's admission
    resolves it: docs/pods.md, "Priority")."""
    priority: Annotated[int, Meta(ge=-2147483648, le=2000001000)] | None = None
    """Set by cloudcore from the PriorityClass (a value written by hand must equal it);
    None: 0. Higher goes first where the cloud must choose: moves off a lost node and
    pending pods placed on scarce capacity."""
    dns_policy: Literal["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"] | None \
        = None
    """ClusterFirst (Kubernetes' default) and ClusterFirstWithHostNet are Default at the
    edge (there is no cluster DNS): the node's resolv.conf. None: `dnsConfig` only."""
    dns_config: PodDNSConfig | None = None
    image_pull_secrets: list[LocalObjectReference] = []
    """kubernetes.io/dockerconfigjson Secrets of the pod's namespace: credentials for
    its image pulls."""
    host_pid: bool = msgspec.field(default=False, name="hostPID")
    """Share the node's process namespace (only where the policy level allows)."""
    host_ipc: bool = msgspec.field(default=False, name="hostIPC")
    """Share the node's IPC namespace (only where the policy level allows)."""
    termination_grace_period_seconds: Annotated[int, Meta(ge=0, le=3600)] = 10
    volumes: list[Volume] = []
    affinity: Affinity | None = None
    """Node affinity and inter-pod (anti-)affinity, honoured by cloudcore's scheduler
    (the agent ignores it)."""

    def __post_init__(self) -> None:
        _rule(lambda v: validate.unique(v, "container names"),
              [c.name for c in self.all_containers()], "containers")
        for at, name in (("serviceAccountName", self.service_account_name),
                         ("priorityClassName", self.priority_class_name)):
            if name is not None:
                _rule(validate.dns_name, name, at)
        if self.dns_policy == "None" and (self.dns_config is None
                                          or not self.dns_config.nameservers):
            raise ValueError("@dnsConfig.nameservers: dnsPolicy None needs at least one "
                             "nameserver in dnsConfig")
        for i, x in enumerate(self.security_context.sysctls if self.security_context else ()):
            if self.host_network and x.name.startswith("net."):
                raise ValueError(f"@securityContext.sysctls[{i}].name: {x.name} cannot be set "
                                 "with hostNetwork (it would change the node's)")
            if self.host_ipc and (x.name.startswith(("kernel.shm", "kernel.msg", "kernel.sem"))
                                  or x.name.startswith("fs.mqueue.")):
                raise ValueError(f"@securityContext.sysctls[{i}].name: {x.name} cannot be set "
                                 "with hostIPC (it would change the node's)")
        for i, c in enumerate(self.containers):
            if c.restart_policy is not None:
                raise ValueError(f"@containers[{i}].restartPolicy: allowed only on init "
                                 "containers (a sidecar)")
        for i, c in enumerate(self.init_containers):
            probes = [k for k, p in (("livenessProbe", c.liveness_probe),
                                     ("readinessProbe", c.readiness_probe),
                                     ("startupProbe", c.startup_probe)) if p is not None]
            if probes and c.restart_policy is None:
                raise ValueError(f"@initContainers[{i}].{probes[0]}: an init container that "
                                 "runs to completion cannot have probes (a sidecar, "
                                 "restartPolicy: Always, can)")
        vols = [v.name for v in self.volumes]
        validate.unique(vols, "volume names")
        for c in self.all_containers():
            for m in c.volume_mounts:
                if m.name not in vols:
                    raise ValueError(f"container {c.name!r}: volumeMount {m.name!r} names no "
                                     f"volume of the pod (volumes: {', '.join(vols) or 'none'})")
        names = {c.name for c in self.all_containers()}
        for c in self.all_containers():
            for e in c.env:
                ref = e.value_from.resource_field_ref if e.value_from is not None else None
                if ref is not None and ref.container_name not in (None, "", *names):
                    raise ValueError(f"container {c.name!r}: env {e.name!r} resourceFieldRef "
                                     f"containerName {ref.container_name!r} names no "
                                     "container of the pod")
        pod = self.security_context
        for c in self.all_containers():
            sc = c.security_context
            user = _first(sc and sc.run_as_user, pod and pod.run_as_user)
            non_root = _first(sc and sc.run_as_non_root, pod and pod.run_as_non_root)
            if non_root and user == 0:
                raise ValueError(f"container {c.name!r}: runAsNonRoot is true but "
                                 "runAsUser is 0")
            if sc is not None and sc.proc_mount == "Unmasked" and self.host_users:
                raise ValueError(f"container {c.name!r}: procMount Unmasked needs "
                                 "hostUsers: false (a user namespace), as in Kubernetes")

    def _tidy(self, out: dict[str, Any]) -> None:
        for c in [*out["containers"], *out.get("initContainers", ())]:
            if c.get("resources") == {}:
                del c["resources"]

    def with_node(self, node: str | None) -> PodSpec:
        """This spec placed on `node` (`nodeName`), without validating it again: what a
        workload's template gives each of its pods (the rest is shared, all frozen)."""
        return msgspec.structs.replace(self, node_name=node)

    def all_containers(self) -> list[Container]:
        """The init containers, then the app containers."""
        return [*self.init_containers, *self.containers] if self.init_containers \
            else self.containers

    def volume(self, name: str) -> Volume:
        return next(v for v in self.volumes if v.name == name)

    def host_ports(self) -> frozenset[tuple[str, int]]:
        """(protocol, port) pairs this pod takes on its node: each `hostPort` of the app
        containers and sidecars, and with hostNetwork every `containerPort` (the pod
        listens on the node's own addresses), as Kubernetes counts them."""
        out: set[tuple[str, int]] = set()
        for c in self.containers + [i for i in self.init_containers
                                    if i.restart_policy == "Always"]:
            for p in c.ports:
                port = p.container_port if self.host_network else p.host_port
                if port:
                    out.add((p.protocol, port))
        return frozenset(out)

    def requests(self) -> dict[str, int]:
        """The pod's requests by resource name, as Kubernetes counts them: the app
        containers and the sidecars together, or the largest init container (with the
        sidecars started before it) if that is more."""
        total: dict[str, int] = {}
        sidecars: dict[str, int] = {}
        peak: dict[str, int] = {}
        for c in self.init_containers:
            names = {*c.resources.requests, *c.resources.limits}
            if c.restart_policy == "Always":
                for name in names:
                    sidecars[name] = sidecars.get(name, 0) + c.resources.request(name)
                continue
            for name in {*names, *sidecars}:
                need = sidecars.get(name, 0) + (c.resources.request(name) if name in names
                                                else 0)
                peak[name] = max(peak.get(name, 0), need)
        for c in self.containers:
            for name in {*c.resources.requests, *c.resources.limits}:
                total[name] = total.get(name, 0) + c.resources.request(name)
        for name, n in sidecars.items():
            total[name] = total.get(name, 0) + n
        for name, n in peak.items():
            total[name] = max(total.get(name, 0), n)
        return total


def _first(*values: Any) -> Any:
    """The first value that is not None (a container's field over its pod's)."""
    return next((v for v in values if v is not None), None)


SPEC_TYPES: tuple[type[Spec], ...] = (
    PodSpec, Container, EnvVar, EnvVarSource, ObjectFieldSelector, ResourceFieldSelector,
    ConfigMapKeySelector, SecretKeySelector, EnvFromSource, ConfigMapEnvSource,
    SecretEnvSource, Sysctl, PodDNSConfig, PodDNSConfigOption, LocalObjectReference,
    ContainerPort, ResourceRequirements, VolumeMount, Volume,
    HostPathVolumeSource, EmptyDirVolumeSource, KeyToPath, ConfigMapVolumeSource,
    SecretVolumeSource, Probe, ExecAction, TCPSocketAction, HTTPGetAction, SecurityContext,
    PodSecurityContext, Capabilities, SeccompProfile, Toleration, Affinity, NodeAffinity,
    NodeSelector, NodeSelectorTerm, NodeSelectorRequirement, PreferredSchedulingTerm,
    PodAffinity, PodAffinityTerm, WeightedPodAffinityTerm, AffinitySelector,
    LabelSelectorRequirement)
"""Every piece of the pod spec."""


# -- statuses (built by the edge, validated by the cloud) ----------------------------------


_ALIASES = {"pod_ip": "podIP"}  # where Kubernetes' name is not plain camelCase


def _camel(name: str) -> str:
    if name in _ALIASES:
        return _ALIASES[name]
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


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
    init_container_statuses: list[ContainerStatus] | None = None  # None: the pod has none
    revision: str | None = None
    updated_at: float | None = None
    ready: bool | None = None  # Running and every container ready (None: not reported)
    pod_ip: str | None = None  # the pod's own address (None: hostNetwork or not reported)

    def to_wire(self) -> dict[str, Any]:
        """What a report carries for this pod (`shared.models.PodStatus` validates it)."""
        return _wire(self)
