"""The one kit of value checks that `shared` validates with.

Two kinds of helpers, both pydantic-free (the agent imports them):

- field checks for the wire messages (`shared.codec`): ``check(value) -> value``,
  made by the factories below (`integer(ge=0)`, `string(max_length=64)`,
  `optional(...)`, `array(...)`...), raising `ValueError` with a short reason
  ("must be an integer, not str"); the codec adds the field name;
- the rules of Kubernetes-shaped values that msgspec's type constraints cannot
  state (`dns_name`, `abs_path`, `host_path`, `rel_path`, `http_path`,
  `capability`, `quantities`, ...): ``rule(value) -> value`` or `ValueError`
  saying what is wrong; the pod spec (`shared.pods`) and the cloud's object models
  (`shared.models`) both call them, so a rule is written once.

A check never converts between JSON types (a string is not an integer here, as in
Kubernetes' API); `number` alone widens an int to a float.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from shared.errors import ObjectError
from shared.quantity import parse_resource
from shared.topics import valid_node_name

Check = Callable[[Any], Any]
"""A field check: the (possibly normalised) value, or `ValueError` saying why not."""

MAX_NAME = 253
"""The longest DNS-1123 name (Kubernetes' object names)."""
MAX_ID = 2**32 - 2
"""The largest user or group id (2**32 - 1 is the kernel's "no id")."""
CAPABILITY = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
"""A Linux capability as Kubernetes writes it (`NET_ADMIN`; `CAP_NET_ADMIN` is accepted
too, and `ALL` in `drop` means every capability)."""


def type_name(v: object) -> str:
    """The JSON-ish name of a value's type for a message ("null" for None)."""
    return "null" if v is None else type(v).__name__


# -- field checks (the codec's) ----------------------------------------------------------


def integer(*, ge: int | None = None) -> Check:
    """An int (never a bool), at least `ge` if given."""

    def check(v: Any) -> int:
        if type(v) is not int:  # bool is an int subclass and is not accepted
            raise ValueError(f"must be an integer, not {type_name(v)}")
        if ge is not None and v < ge:
            raise ValueError(f"must be >= {ge}")
        return v

    return check


def string(*, min_length: int = 0, max_length: int | None = None) -> Check:
    """A str of `min_length` to `max_length` characters."""

    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"must be a string, not {type_name(v)}")
        if len(v) < min_length:
            raise ValueError(f"must have at least {min_length} character(s)")
        if max_length is not None and len(v) > max_length:
            raise ValueError(f"must have at most {max_length} characters")
        return v

    return check


def number(*, gt: float | None = None, le: float | None = None) -> Check:
    """An int or float (never a bool), returned as a float."""

    def check(v: Any) -> float:
        if type(v) not in (int, float):
            raise ValueError(f"must be a number, not {type_name(v)}")
        f = float(v)
        if gt is not None and not f > gt:
            raise ValueError(f"must be > {gt:g}")
        if le is not None and not f <= le:
            raise ValueError(f"must be <= {le:g}")
        return f

    return check


def boolean(v: Any) -> bool:
    """A bool (not 0 or 1)."""
    if not isinstance(v, bool):
        raise ValueError(f"must be a boolean, not {type_name(v)}")
    return v


def literal(*choices: str) -> Check:
    """One of the strings `choices`."""

    def check(v: Any) -> str:
        if not isinstance(v, str) or v not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, not {v!r}")
        return v

    return check


def optional(inner: Check) -> Check:
    """None, or what `inner` accepts."""

    def check(v: Any) -> Any:
        return None if v is None else inner(v)

    return check


def mapping(value: Check | None = None) -> Check:
    """A dict with str keys (and values `value` accepts, if given)."""

    def check(v: Any) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise ValueError(f"must be a map, not {type_name(v)}")
        for k, x in v.items():
            if not isinstance(k, str):
                raise ValueError(f"keys must be strings, not {type_name(k)}")
            if value is not None:
                try:
                    value(x)
                except ValueError as exc:
                    raise ValueError(f"[{k!r}] {exc}") from None
        return v

    return check


def array(item: Check, *, max_length: int | None = None) -> Check:
    """A list of at most `max_length` items, each accepted by `item`."""

    def check(v: Any) -> list[Any]:
        if not isinstance(v, list):
            raise ValueError(f"must be a list, not {type_name(v)}")
        if max_length is not None and len(v) > max_length:
            raise ValueError(f"must have at most {max_length} items")
        for i, x in enumerate(v):
            try:
                item(x)
            except ValueError as exc:
                raise ValueError(f"[{i}] {exc}") from None
        return v

    return check


def byte_string(*, max_length: int) -> Check:
    """bytes of at most `max_length`."""

    def check(v: Any) -> bytes:
        if not isinstance(v, bytes):
            raise ValueError(f"must be bytes, not {type_name(v)}")
        if len(v) > max_length:
            raise ValueError(f"must have at most {max_length} bytes")
        return v

    return check


def anything(v: Any) -> Any:
    """Any value (checked elsewhere)."""
    return v


def map_or_none(v: Any) -> Any:
    """A dict or None."""
    if v is not None and not isinstance(v, dict):
        raise ValueError(f"must be a map or nil, not {type_name(v)}")
    return v


# -- rules of Kubernetes-shaped values ---------------------------------------------------


def dns_name(v: str) -> str:
    """A lowercase DNS-1123 name (object, container, volume names)."""
    if not valid_node_name(v):
        raise ValueError(
            "must be a lowercase DNS-1123 name: a-z, 0-9, '-' and '.', starting and "
            f"ending with a letter or digit, at most {MAX_NAME} characters")
    return v


def abs_path(v: str) -> str:
    """An absolute, normalised path without '..' and not '/' (a mount point)."""
    parts = v.split("/")
    if not v.startswith("/") or "\x00" in v or ".." in parts or not v.strip("/"):
        raise ValueError(f"{v!r} must be an absolute path without '..', not '/'")
    return v


def host_path(v: str) -> str:
    """An absolute path on the node without '..' ('/' allowed)."""
    if not v.startswith("/") or "\x00" in v or ".." in v.split("/"):
        raise ValueError(f"{v!r} must be an absolute host path without '..'")
    return v


def rel_path(v: str) -> str:
    """A relative path (a projected file, a seccomp profile): no leading '/', no '..' or
    empty component."""
    parts = v.split("/")
    if not v or v.startswith("/") or "\x00" in v or ".." in parts or "" in parts:
        raise ValueError(f"{v!r} must be a relative path without '..' or empty parts")
    return v


def http_path(v: str) -> str:
    """The path of an HTTP probe: starts with '/', no spaces or control characters."""
    if not v.startswith("/") or any(c.isspace() or ord(c) < 32 for c in v):
        raise ValueError(f"{v!r} must start with '/' and contain no spaces")
    return v


def capability(v: str) -> str:
    """A capability name such as NET_ADMIN."""
    if not CAPABILITY.match(v):
        raise ValueError(f"{v!r} is not a capability name such as NET_ADMIN")
    return v


def group_id(v: int) -> int:
    """A user or group id within 0..MAX_ID."""
    if not 0 <= v <= MAX_ID:
        raise ValueError(f"group {v} is outside 0..{MAX_ID}")
    return v


def quantities(values: Mapping[str, str | int | float]) -> None:
    """Every resource amount parses for its resource (`shared.quantity`)."""
    for name, q in values.items():
        try:
            parse_resource(name, q, field=name)
        except ObjectError as exc:
            raise ValueError(exc.message) from None


def unique(names: list[str], what: str) -> None:
    """No name twice; `what` says which ("container names")."""
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must be unique within a pod")


FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
               "spec.serviceAccountName", "status.podIP", "status.podIPs", "status.hostIP",
               "status.hostIPs")
"""The pod fields an env `fieldRef` may name, besides `metadata.labels['KEY']` and
`metadata.annotations['KEY']` (Kubernetes' list for environment variables)."""
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['([^'\]]{1,317})'\]$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


def field_path(v: str) -> str:
    """A `fieldRef.fieldPath` edgefed resolves (FIELD_PATHS or a label / annotation)."""
    if v not in FIELD_PATHS and not _SUBSCRIPT.match(v):
        raise ValueError(f"{v!r} is not a supported fieldPath (one of {', '.join(FIELD_PATHS)}, "
                         "metadata.labels['KEY'], metadata.annotations['KEY'])")
    return v


def subscript(path: str) -> tuple[str, str] | None:
    """`metadata.labels['app']` -> ("labels", "app"); None for a plain field path."""
    m = _SUBSCRIPT.match(path)
    return (m.group(1), m.group(2)) if m else None


def env_name(v: str) -> str:
    """An environment variable name: printable ASCII without '=' (Kubernetes' rule since
    1.30; the C identifier rule of before is a subset)."""
    if not v or "=" in v or any(not 32 <= ord(c) <= 126 for c in v):
        raise ValueError(f"{v!r} must be printable ASCII characters without '='")
    return v


def data_key(v: str) -> str:
    """A ConfigMap / Secret key: [-._a-zA-Z0-9], at most 253 characters, not '.' or '..'."""
    if not _DATA_KEY.match(v) or v in (".", ".."):
        raise ValueError(f"{v!r} must consist of alphanumerics, '-', '_' or '.' (at most "
                         "253), and not be '.' or '..'")
    return v


def divisor(resource: str, v: str | int | float) -> str | int | float:
    """A resourceFieldRef divisor: a positive quantity of `resource` (cpu or memory)."""
    try:
        n = parse_resource(resource, v, field="divisor")
    except ObjectError as exc:
        raise ValueError(exc.message.removeprefix("divisor: ")) from None
    if n <= 0:
        raise ValueError(f"{v!r} must be a positive {resource} quantity")
    return v


_SYSCTL = re.compile(r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?([./][a-z0-9]([-_a-z0-9]*[a-z0-9])?)*$")
_RESOLV_WORD = re.compile(r"^[!-~]+$")


def sysctl(v: str) -> str:
    """A sysctl name as Kubernetes writes it (`net.ipv4.ip_local_port_range`)."""
    if not _SYSCTL.match(v) or len(v) > 253:
        raise ValueError(f"{v!r} is not a sysctl name such as net.ipv4.tcp_syncookies")
    return v


def resolv_word(v: str) -> str:
    """A word of resolv.conf (an option's name or value): printable, no spaces."""
    if not _RESOLV_WORD.match(v):
        raise ValueError(f"{v!r} must be printable characters without spaces")
    return v


def ip_address(v: str) -> str:
    """An IPv4 or IPv6 address."""
    import ipaddress

    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None
    return v


def search_domain(v: str) -> str:
    """A DNS search domain (a trailing '.' allowed)."""
    if not v or len(v) > MAX_NAME or not valid_node_name(v.rstrip(".").lower()):
        raise ValueError(f"{v!r} is not a DNS domain name")
    return v
