"""Which brokers the link tries, in which order (proposal 0007), free of MQTT.

A node's broker list comes from two places, and this module is the one rule that
combines them (`BrokerList.effective`):
- the list it got at join (`edgecore.json`'s `brokers`, or the single broker of an
  older config or of `edgecore run --mqtt-host/--mqtt-port`): `AgentSettings.mqtt_brokers`;
- the `broker/-/map` entry of its desired set. The cloud puts it there when a change of
  the map changes the node's list (a node whose list never changed since it joined has
  none), so the entry, when present, is the newer word: "the entry if present and not
  older than the join list, else the join list". The entry is persisted with the
  desired set (one synced LMDB transaction, acked like any entry), which is what makes
  a followed move survive a restart; `edgecore.json` keeps the join list as it was.

The link connects to the first URL that answers, in list order (`order`), and while it
sits on any other broker it asks `ahead_of` which ones it should try to go back to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.brokermap import BrokerURL, normal_url, parse_url, url_of
from shared.entries import BROKER_MAP_KEY, parse_broker_map_entry
from shared.errors import ObjectError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """One broker the link can connect to: its URL as stored and what it parses to."""

    url: str
    host: str
    port: int
    tls: bool

    @classmethod
    def of(cls, url: str) -> Endpoint:
        """Parse `mqtts://host:port` / `mqtt://host:port`; ObjectError naming the URL."""
        u: BrokerURL = parse_url(url)
        return cls(url=normal_url(url), host=u.host, port=u.port, tls=u.tls)

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class BrokerList:
    """The brokers a node tries, home first, and the map version they come from
    (0: not from a map, e.g. an old config or an address given on the command line)."""

    endpoints: tuple[Endpoint, ...]
    version: int = 0

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("a broker list needs at least one broker")

    @classmethod
    def of(cls, urls: tuple[str, ...] | list[str], version: int = 0) -> BrokerList:
        """From URLs (ObjectError for one that is not a broker URL); duplicates are
        dropped, keeping the first place."""
        eps: dict[str, Endpoint] = {}
        for u in urls:
            ep = Endpoint.of(u)
            eps.setdefault(ep.url, ep)
        return cls(endpoints=tuple(eps.values()), version=version)

    @classmethod
    def single(cls, host: str, port: int, *, tls: bool) -> BrokerList:
        return cls.of([url_of(host, port, tls=tls)])

    @property
    def home(self) -> Endpoint:
        return self.endpoints[0]

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(e.url for e in self.endpoints)

    def order(self) -> tuple[Endpoint, ...]:
        """The order of one connect round: home first, then the fallbacks."""
        return self.endpoints

    def ahead_of(self, current: Endpoint) -> tuple[Endpoint, ...]:
        """The brokers the link should rather be on than `current`: those listed before
        it (none when it is the home), or every one when it is not listed at all (the
        map moved the node away from it)."""
        for i, e in enumerate(self.endpoints):
            if e.url == current.url:
                return self.endpoints[:i]
        return self.endpoints

    @classmethod
    def effective(cls, joined: BrokerList, items: Mapping[str, Any]) -> BrokerList:
        """The list in force: the desired set's `broker/-/map` entry if it has a valid
        one not older than the join list (`items` is the desired set's key -> value),
        else the join list. A malformed or older entry is logged and ignored (the node
        stays reachable on its join list)."""
        value = items.get(BROKER_MAP_KEY)
        if value is None:
            return joined
        try:
            entry = parse_broker_map_entry(BROKER_MAP_KEY, value)
            if entry.version < joined.version:
                raise ValueError(f"its map version {entry.version} is older than the "
                                 f"join list's ({joined.version})")
            return cls.of(entry.urls, version=entry.version)
        except (ObjectError, ValueError) as exc:
            log.warning("ignoring the desired %s entry: %s; using the brokers from join "
                        "(%s)", BROKER_MAP_KEY, exc, ", ".join(joined.urls))
            return joined


class BrokerSource:
    """`BrokerList.effective` of a desired set that changes, worked out again only when
    its `broker/-/map` entry did (a malformed one is logged once, not on every look)."""

    def __init__(self, joined: BrokerList, items: Callable[[], Mapping[str, Any]]) -> None:
        self.joined = joined
        self._items = items
        self._seen: tuple[Any, BrokerList] | None = None

    def __call__(self) -> BrokerList:
        value = self._items().get(BROKER_MAP_KEY)
        if self._seen is None or self._seen[0] != value:
            self._seen = (value, BrokerList.effective(self.joined, {BROKER_MAP_KEY: value}
                                                      if value is not None else {}))
        return self._seen[1]
