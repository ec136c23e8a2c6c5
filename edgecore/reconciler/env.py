"""A container's environment as Kubernetes builds it: `envFrom`, then `env` with
`valueFrom`, and `$(VAR)` references expanded in values, command and args.

The kubelet's rules, followed here:
- `envFrom` sources first, in order (a later key wins), each key prefixed with the
  source's `prefix`; a key that is not a valid variable name is skipped.
- then `env`, in order, overriding: a plain `value` (with `$(NAME)` replaced by the value
  of a variable defined before it, `$$` by `$`, an unknown reference left as written),
  or `valueFrom`: a ConfigMap or Secret key, a pod field (`fieldRef`) or a container's
  resource (`resourceFieldRef`, rounded up after dividing by `divisor`; an unset limit
  is the node's capacity).
- a missing ConfigMap / Secret, or a missing key, is an error (the container waits,
  CreateContainerConfigError) unless the reference is `optional`: then the variable is
  left out (or the whole source, for `envFrom`).
- the container's `command` and `args` get `$(NAME)` replaced from the final environment.

ConfigMaps and Secrets are read from the node's desired set through `data(key)` (the
reconciler's: Secrets are opened there, never logged). Pure otherwise, but for
`host_ip()`, which asks the kernel which address the node's default route uses.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shared.entries import PodEntry, configmap_key, secret_key, split_key
from shared.pods import Container, EnvVarSource
from shared.quantity import parse_resource
from shared.validate import env_name, subscript

Data = Callable[[str], Mapping[str, bytes] | None]
"""`data(desired key)` -> the ConfigMap's / Secret's keys, None if it is not on the node."""

_REF = re.compile(r"\$\$|\$\(([^)$]*)\)")


class EnvError(Exception):
    """The environment cannot be built yet (a ConfigMap, Secret or key is missing): the
    container waits with CreateContainerConfigError and is tried again next pass."""


def _mem_total(meminfo: str = "/proc/meminfo") -> int:
    with contextlib.suppress(OSError, ValueError), open(meminfo) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class PodFacts:
    """What `fieldRef` and `resourceFieldRef` read besides the pod entry."""

    node: str
    pod_ip: str
    host_ip: str
    cpu_millis: int = field(default_factory=lambda: (os.cpu_count() or 1) * 1000)
    """The node's capacity: what an unset limit stands for."""
    memory_bytes: int = field(default_factory=_mem_total)



def host_ip() -> str:
    """The node's address (`status.hostIP`): the source address of its default route
    (a UDP socket "connected" to a documentation address sends nothing), else the first
    address of its host name, else 127.0.0.1 (an offline device without routes)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        addr: str = s.getsockname()[0]
        return addr
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return "127.0.0.1"


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(NAME)` expansion: a defined NAME is replaced, `$$` is `$`, anything
    else stays as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


def pod_uid(entry: PodEntry) -> str:
    """The pod's uid: the cloud's when the entry carries it, else one derived from the
    pod's namespace and name (stable for the pod, as a uid is)."""
    if entry.uid:
        return entry.uid
    import uuid  # rarely needed: not on the agent's import path

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"edgefed:{entry.key}"))


def build(entry: PodEntry, c: Container, *, data: Data, facts: PodFacts) -> dict[str, str]:
    """The environment of container `c` (raises EnvError saying what is missing)."""
    env: dict[str, str] = {}
    for src in c.env_from:
        ref = src.config_map_ref or src.secret_ref
        assert ref is not None
        kind, k = (("ConfigMap", configmap_key(entry.namespace, ref.name))
                   if src.config_map_ref is not None
                   else ("Secret", secret_key(entry.namespace, ref.name)))
        values = data(k)
        if values is None:
            if ref.optional:
                continue
            raise EnvError(f"{kind.lower()} {ref.name!r} not found (envFrom of container "
                           f"{c.name!r})")
        for name, raw in values.items():
            var = src.prefix + name
            try:
                env_name(var)
            except ValueError:
                continue  # Kubernetes skips such keys (and records an event)
            env[var] = _text(raw, kind, ref.name, name)
    for e in c.env:
        if e.value_from is None:
            env[e.name] = expand(e.value, env)
            continue
        value = _value_from(entry, c, e.name, e.value_from, data=data, facts=facts)
        if value is not None:
            env[e.name] = value
    return env


def _text(raw: bytes, kind: str, name: str, key: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise EnvError(f"{kind} {name!r} key {key!r} is not UTF-8 text and cannot be an "
                       "environment variable") from None


def _value_from(entry: PodEntry, c: Container, var: str, src: EnvVarSource, *,
                data: Data, facts: PodFacts) -> str | None:
    """A `valueFrom` value; None for an optional reference that is not there."""
    key_ref = src.config_map_key_ref or src.secret_key_ref
    if key_ref is not None:
        kind, k = (("ConfigMap", configmap_key(entry.namespace, key_ref.name))
                   if src.config_map_key_ref is not None
                   else ("Secret", secret_key(entry.namespace, key_ref.name)))
        values = data(k)
        if values is None:
            if key_ref.optional:
                return None
            raise EnvError(f"{kind.lower()} {key_ref.name!r} not found (env {var!r} of "
                           f"container {c.name!r})")
        if key_ref.key not in values:
            if key_ref.optional:
                return None
            raise EnvError(f"couldn't find key {key_ref.key} in {kind} "
                           f"{entry.namespace}/{key_ref.name} (env {var!r} of container "
                           f"{c.name!r})")
        return _text(values[key_ref.key], kind, key_ref.name, key_ref.key)
    if src.field_ref is not None:
        return _field(entry, src.field_ref.field_path, facts)
    ref = src.resource_field_ref
    assert ref is not None
    target = next((x for x in entry.spec.all_containers()
                   if x.name == (ref.container_name or c.name)), c)
    kind, _, resource = ref.resource.partition(".")
    res = target.resources
    if kind == "limits":
        amount = res.limit(resource)
        if amount is None:
            amount = facts.cpu_millis if resource == "cpu" else facts.memory_bytes
    else:
        amount = res.request(resource)
    div = parse_resource(resource, ref.divisor, field="divisor")
    return str(math.ceil(amount / div))


def _field(entry: PodEntry, path: str, facts: PodFacts) -> str:
    sub = subscript(path)
    if sub is not None:
        kind, key = sub
        source = entry.labels if kind == "labels" else (entry.annotations or {})
        return source.get(key, "")
    _, ns, name = split_key(entry.key)
    values = {
        "metadata.name": name,
        "metadata.namespace": ns,
        "metadata.uid": pod_uid(entry),
        "spec.nodeName": entry.spec.node_name or facts.node,
        "spec.serviceAccountName": entry.spec.service_account_name or "",
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
    }
    return values[path]
