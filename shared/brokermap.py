"""The partition -> broker map (proposal 0007): which brokers a node tries, in order.

The fleet spreads over several MQTT brokers by partition (`shared.topics.partition_of`).
cloudcore owns the map; a node gets its own list (`urls_for(its partition)`) at join and,
on a change, as the `broker/-/map` desired entry (`shared.entries.broker_map_entry`).

Shape (`to_value` / `from_value`, JSON-able):

    {"version": 7,
     "brokers": {"mq-0": {"urls": ["mqtts://mq-0.example:8883"], "state": "active"}, ...},
     "partitions": [["mq-0", "mq-1"], ...]}        # 256 lists, home first

Rules every operation keeps (and `from_value` checks):
- `version` only grows: each change returns a map with `version + 1`; an operation
  that changes nothing returns the same map (so repeating a move costs no version).
- `partitions[p]` is a non-empty list of distinct known broker names: home first, then
  the fallbacks in the order a node tries them.
- a `draining` broker is home of no partition once `drain` ran, and no move makes it one;
  it stays as the last fallback of the partitions it was home of until `remove` (the
  lists of other partitions are left alone: their nodes get one new list, at `remove`).
- broker names are DNS labels (they appear in API paths); URLs are
  `mqtts://host:port` (TLS) or `mqtt://host:port` (plain, insecure mode only), stored
  with their port (a URL given without one gets 8883 or 1883).

Pure values, no I/O, no pydantic: the agent imports this module too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple, TypeGuard

from shared.errors import ObjectError
from shared.topics import PARTITIONS

BrokerState = Literal["active", "draining"]
STATES: tuple[BrokerState, ...] = ("active", "draining")
DEFAULT_PORTS = {"mqtts": 8883, "mqtt": 1883}
MAX_BROKERS = 64
"""More brokers than this is a configuration mistake here (the cloud subscribes every
partition on every broker; proposal 0007, "What is not decided")."""
MAX_URLS = 8

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_URL = re.compile(r"^(mqtts?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?)"
                  r"(?::([0-9]{1,5}))?/?$")


class BrokerURL(NamedTuple):
    """A parsed broker URL: what an MQTT client needs to connect."""

    host: str
    """Host name or address (an IPv6 address without its brackets)."""
    port: int
    tls: bool


def parse_url(url: str, field: str = "url") -> BrokerURL:
    """`mqtts://host:port` or `mqtt://host:port` -> BrokerURL; the port defaults to 8883
    (mqtts) or 1883 (mqtt). Raises ObjectError naming `field` for anything else."""
    m = _URL.match(url) if isinstance(url, str) else None
    if m is None:
        raise ObjectError(f"{field}: {url!r} is not a broker URL "
                          "(mqtts://host:port, or mqtt://host:port in insecure mode)",
                          field=field)
    scheme, host, _, port_text = m.groups()
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise ObjectError(f"{field}: port {port} of {url!r} is not 1-65535", field=field)
    return BrokerURL(host=host.strip("[]"), port=port, tls=scheme == "mqtts")


def normal_url(url: str, field: str = "url") -> str:
    """A broker URL in its stored form (port written out); ObjectError as `parse_url`."""
    u = parse_url(url, field)
    host = f"[{u.host}]" if ":" in u.host else u.host
    return f"{'mqtts' if u.tls else 'mqtt'}://{host}:{u.port}"


def url_of(host: str, port: int, *, tls: bool) -> str:
    """The URL of a broker address (for a map built from `--mqtt host:port`)."""
    return normal_url(f"{'mqtts' if tls else 'mqtt'}://"
                      f"{f'[{host}]' if ':' in host else host}:{port}")


def valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.match(name) is not None


def _check_name(name: object, field: str) -> str:
    if not valid_name(name):
        raise ObjectError(f"{field}: broker name {name!r} must be a DNS label (lower-case "
                          "letters, digits and '-', at most 63 characters)", field=field)
    assert isinstance(name, str)
    return name


def _is_state(value: object) -> TypeGuard[BrokerState]:
    return value in STATES


@dataclass(frozen=True)
class Broker:
    urls: tuple[str, ...]
    """Addresses of this broker, in the order a client tries them (stored form)."""
    state: BrokerState = "active"


@dataclass(frozen=True)
class BrokerMap:
    version: int
    brokers: dict[str, Broker]
    partitions: tuple[tuple[str, ...], ...]
    """`partitions[p]`: broker names in the order a node of partition p tries them."""

    # -- building -------------------------------------------------------------------------

    @classmethod
    def single(cls, name: str, url: str) -> BrokerMap:
        """The embedded default: one broker, every partition on it, version 1."""
        return cls.spread({name: url}, 1)

    @classmethod
    def spread(cls, brokers: Mapping[str, str], version: int = 1) -> BrokerMap:
        """Every broker (name -> URL) active; partition p's home is broker `p % n` in name
        order, and the others follow as fallbacks in rotation (p+1, p+2, ...)."""
        if not brokers:
            raise ObjectError("brokers: at least one broker is needed", field="brokers")
        if len(brokers) > MAX_BROKERS:
            raise ObjectError(f"brokers: {len(brokers)} brokers, at most {MAX_BROKERS}",
                              field="brokers")
        names = sorted(brokers)
        table = {_check_name(n, "brokers"): Broker(urls=(normal_url(brokers[n],
                                                                    f"brokers.{n}"),))
                 for n in names}
        n = len(names)
        parts = tuple(tuple(names[(p + i) % n] for i in range(n)) for p in range(PARTITIONS))
        return cls(version=_check_version(version), brokers=table, partitions=parts)

    @classmethod
    def from_value(cls, obj: Any) -> BrokerMap:
        """The JSON shape (module docstring) -> BrokerMap; raises ObjectError naming the
        bad field."""
        if not isinstance(obj, Mapping):
            raise ObjectError("broker map: must be an object with version, brokers and "
                              "partitions")
        version = _check_version(obj.get("version"))
        raw = obj.get("brokers")
        if not isinstance(raw, Mapping) or not raw:
            raise ObjectError("brokers: must be a non-empty object of name -> "
                              "{urls, state}", field="brokers")
        if len(raw) > MAX_BROKERS:
            raise ObjectError(f"brokers: {len(raw)} brokers, at most {MAX_BROKERS}",
                              field="brokers")
        table: dict[str, Broker] = {}
        for name, b in raw.items():
            where = f"brokers.{name}"
            _check_name(name, "brokers")
            if not isinstance(b, Mapping):
                raise ObjectError(f"{where}: must be an object with urls and state",
                                  field=where)
            urls = b.get("urls")
            if (not isinstance(urls, list | tuple) or not urls or len(urls) > MAX_URLS):
                raise ObjectError(f"{where}.urls: must list 1 to {MAX_URLS} URLs",
                                  field=f"{where}.urls")
            state = b.get("state", "active")
            if not _is_state(state):
                raise ObjectError(f"{where}.state: {state!r} is not one of {list(STATES)}",
                                  field=f"{where}.state")
            table[name] = Broker(urls=tuple(normal_url(u, f"{where}.urls[{i}]")
                                            for i, u in enumerate(urls)), state=state)
        parts_raw = obj.get("partitions")
        if not isinstance(parts_raw, list | tuple) or len(parts_raw) != PARTITIONS:
            raise ObjectError(f"partitions: must list {PARTITIONS} entries", field="partitions")
        parts: list[tuple[str, ...]] = []
        for p, names in enumerate(parts_raw):
            where = f"partitions[{p}]"
            if (not isinstance(names, list | tuple) or not names
                    or any(not isinstance(n, str) or n not in table for n in names)
                    or len(set(names)) != len(names)):
                raise ObjectError(f"{where}: {names!r} must be a non-empty list of distinct "
                                  "names from brokers", field=where)
            parts.append(tuple(names))
        return cls(version=version, brokers=table, partitions=tuple(parts))

    def to_value(self) -> dict[str, Any]:
        """The JSON shape (module docstring); `from_value(m.to_value()) == m`."""
        return {"version": self.version,
                "brokers": {n: {"urls": list(b.urls), "state": b.state}
                            for n, b in sorted(self.brokers.items())},
                "partitions": [list(names) for names in self.partitions]}

    # -- reading --------------------------------------------------------------------------

    def home(self, partition: int) -> str:
        """The name of partition p's home broker."""
        return self.partitions[_check_partition(partition)][0]

    def urls_for(self, partition: int) -> list[str]:
        """Partition p's URLs in the order a node tries them: home first."""
        return [u for n in self.partitions[_check_partition(partition)]
                for u in self.brokers[n].urls]

    def homes(self) -> dict[str, list[int]]:
        """Broker name -> the partitions it is home of (every broker, maybe empty)."""
        out: dict[str, list[int]] = {n: [] for n in sorted(self.brokers)}
        for p, names in enumerate(self.partitions):
            out[names[0]].append(p)
        return out

    # -- changing (each returns a new map, version + 1, or self when nothing changes) -----

    def move(self, partitions: Iterable[int], to: str) -> BrokerMap:
        """Each partition gets `to` as home and its old home as first fallback (the rest
        keep their order). `to` must be an active broker."""
        b = self.brokers.get(to)
        if b is None:
            raise ObjectError(f"to: no broker {to!r} in the map (known: "
                              f"{', '.join(sorted(self.brokers))})", field="to")
        if b.state != "active":
            raise ObjectError(f"to: broker {to!r} is {b.state}; partitions move only to "
                              "active brokers", field="to")
        parts = list(self.partitions)
        for p in sorted(set(partitions)):
            names = parts[_check_partition(p)]
            if names[0] == to:
                continue
            parts[p] = (to, names[0], *(n for n in names[1:] if n != to))
        return self._changed(partitions=tuple(parts))

    def drain(self, name: str) -> BrokerMap:
        """Mark `name` draining: each partition it is home of moves home to the active
        broker with the fewest homes at that moment (ties: name order), and keeps `name`
        as its last fallback; other partitions' lists do not change. Refused if no other
        broker is active."""
        if name not in self.brokers:
            raise ObjectError(f"name: no broker {name!r} in the map", field="name")
        active = sorted(n for n, b in self.brokers.items() if b.state == "active" and n != name)
        if not active:
            raise ObjectError(f"name: {name!r} is the only active broker; add another "
                              "before draining it", field="name")
        load = dict.fromkeys(active, 0)
        for names in self.partitions:
            if names[0] in load:
                load[names[0]] += 1
        parts = list(self.partitions)
        for p, names in enumerate(parts):
            if names[0] != name:
                continue
            to = min(active, key=lambda n: (load[n], n))
            load[to] += 1
            parts[p] = (to, *(n for n in names if n not in (name, to)), name)
        brokers = dict(self.brokers)
        brokers[name] = replace(brokers[name], state="draining")
        return self._changed(brokers=brokers, partitions=tuple(parts))

    def add(self, name: str, url: str) -> BrokerMap:
        """A new active broker with no partitions (move some to it). Adding a broker that
        exists with the same URL changes nothing; with another URL it is refused."""
        _check_name(name, "name")
        stored = normal_url(url, "url")
        old = self.brokers.get(name)
        if old is not None:
            if stored in old.urls:
                return self
            raise ObjectError(f"name: broker {name!r} exists with {list(old.urls)}; remove "
                              "it first to change its address", field="name")
        if len(self.brokers) >= MAX_BROKERS:
            raise ObjectError(f"name: the map holds {MAX_BROKERS} brokers, the most allowed",
                              field="name")
        return self._changed(brokers={**self.brokers, name: Broker(urls=(stored,))})

    def remove(self, name: str) -> BrokerMap:
        """Take `name` out of the map and of every fallback list. Refused while it is any
        partition's home (drain it first)."""
        if name not in self.brokers:
            raise ObjectError(f"name: no broker {name!r} in the map", field="name")
        homed = [p for p, names in enumerate(self.partitions) if names[0] == name]
        if homed:
            raise ObjectError(f"name: broker {name!r} is still home of {len(homed)} "
                              f"partition(s) ({_ranges(homed)}); drain or move them first",
                              field="name")
        brokers = {n: b for n, b in self.brokers.items() if n != name}
        parts = tuple(tuple(n for n in names if n != name) for names in self.partitions)
        return self._changed(brokers=brokers, partitions=parts)

    def _changed(self, *, brokers: dict[str, Broker] | None = None,
                 partitions: tuple[tuple[str, ...], ...] | None = None) -> BrokerMap:
        new = replace(self, brokers=self.brokers if brokers is None else brokers,
                      partitions=self.partitions if partitions is None else partitions)
        if new.brokers == self.brokers and new.partitions == self.partitions:
            return self
        return replace(new, version=self.version + 1)


def parse_partitions(text: str) -> list[int]:
    """`0-15,20,0x20` -> partition numbers (decimal, or hex with 0x); ObjectError naming
    the part that is wrong or out of 0..255."""
    out: set[int] = set()
    for part in (s.strip() for s in text.split(",")):
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text, 0)
            hi = int(hi_text, 0) if sep else lo
        except ValueError:
            raise ObjectError(f"partitions: {part!r} is not a number or a range such as "
                              "0-15", field="partitions") from None
        if not 0 <= lo <= hi < PARTITIONS:
            raise ObjectError(f"partitions: {part!r} is not within 0-{PARTITIONS - 1} "
                              "(low-high)", field="partitions")
        out.update(range(lo, hi + 1))
    return sorted(out)


def _ranges(ps: list[int]) -> str:
    out: list[str] = []
    start = prev = ps[0]
    for p in [*ps[1:], -2]:
        if p != prev + 1:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = p
        prev = p
    return ",".join(out)


def _check_version(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ObjectError(f"version: must be a whole number >= 1, not {v!r}", field="version")
    return v


def _check_partition(p: int) -> int:
    if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < PARTITIONS:
        raise ObjectError(f"partitions: {p!r} is not a partition (0-{PARTITIONS - 1})",
                          field="partitions")
    return p
