"""The broker tier's routes (proposal 0007): read and change the partition -> broker map.

    GET    /api/v1/brokermap                       read-only: the map, per broker its
                                                   sessions (nodes last heard there),
                                                   whether cloudcore is connected, how
                                                   many partitions it is home of
    POST   /api/v1/brokermap/move                  operator: {"partitions": [..], "to"}
    POST   /api/v1/brokermap/brokers               operator: add {"name", "url"}
    POST   /api/v1/brokermap/brokers/{name}/drain  operator
    DELETE /api/v1/brokermap/brokers/{name}        operator; 409 while it is a home, and
                                                   while nodes were last heard there
                                                   unless ?force=true

Every change answers the new map as GET does. The API does not own the map: the
service passes a `BrokerTierPort` (cloudcore.synchub.brokers.BrokerTier), which
persists each change before it answers and tells the nodes whose list changed; on a
shard, `cloudcore.cluster.brokermap.SharedBrokerMap`, which writes the change to the
shared store and answers once this shard applied it (every shard applies it).
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cloudcore.auth import Principal
from shared.brokermap import parse_url
from shared.errors import ObjectError
from shared.topics import PARTITIONS


class BrokerTierPort(Protocol):
    """What the routes need of the broker tier."""

    def view(self) -> dict[str, Any]: ...

    def for_join(self, node: str) -> tuple[int, list[str]]: ...

    async def move(self, partitions: list[int], to: str) -> dict[str, Any]: ...

    async def add(self, name: str, url: str) -> dict[str, Any]: ...

    async def drain(self, name: str) -> dict[str, Any]: ...

    async def remove(self, name: str, *, force: bool = False) -> dict[str, Any]: ...


class MoveRequest(BaseModel):
    model_config = {"extra": "forbid"}
    partitions: list[int] = Field(min_length=1, max_length=PARTITIONS,
                                  description="Partitions (0-255) to move.")
    to: str = Field(min_length=1, max_length=63, description="The broker that becomes "
                    "their home (active); their old home becomes the first fallback.")


class AddBrokerRequest(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=63, description="A DNS label, e.g. mq-3.")
    url: str = Field(min_length=1, max_length=300,
                     description="mqtts://host:port (mqtt:// only on an insecure cloudcore).")


def brokermap_router(tier: BrokerTierPort, *, reader: Any, operator: Any,
                     insecure: bool) -> APIRouter:
    """The routes above; `reader`/`operator` are the app's role dependencies."""
    r = APIRouter(tags=["brokers"])

    @r.get("/api/v1/brokermap", summary="The partition -> broker map, with sessions "
           "per broker (read-only)")
    async def get_map(_: Principal = reader) -> dict[str, Any]:
        return tier.view()

    @r.post("/api/v1/brokermap/move", summary="Move partitions to a broker (operator)",
            description="Each partition gets `to` first in its list and its old home "
                        "second; its nodes get the new list as their `broker/-/map` "
                        "entry and move. 404 for an unknown broker, 422 for a draining "
                        "one or a partition outside 0-255.")
    async def move(body: MoveRequest, _: Principal = operator) -> dict[str, Any]:
        bad = [p for p in body.partitions if not 0 <= p < PARTITIONS]
        if bad:
            raise ObjectError(f"partitions: {bad[:5]} outside 0-{PARTITIONS - 1}",
                              field="partitions")
        return await tier.move(sorted(set(body.partitions)), body.to)

    @r.post("/api/v1/brokermap/brokers", summary="Add a broker (operator)",
            description="Active, home of no partition: cloudcore connects to it at once; "
                        "move partitions to it next. Start the broker with the password "
                        "file, ACL and TLS files cloudcore writes.")
    async def add(body: AddBrokerRequest, _: Principal = operator) -> dict[str, Any]:
        if not parse_url(body.url).tls and not insecure:
            raise ObjectError(f"url: {body.url!r} is a plain broker; this cloudcore is "
                              "secure, give mqtts://host:port", field="url")
        return await tier.add(body.name, body.url)

    @r.post("/api/v1/brokermap/brokers/{name}/drain", summary="Drain a broker (operator)",
            description="Its partitions move home to the least loaded active brokers; it "
                        "stays the last fallback until removed. 409 if it is the only "
                        "active broker.")
    async def drain(name: str, _: Principal = operator) -> dict[str, Any]:
        return await tier.drain(name)

    @r.delete("/api/v1/brokermap/brokers/{name}", summary="Remove a broker (operator)",
              description="409 while it is any partition's home (drain it first), and "
                          "while nodes were last heard on it (its `sessions`), unless "
                          "`?force=true`. cloudcore closes its connections to it at once: "
                          "a node still there is reached again only when it next retries "
                          "its home broker.")
    async def remove(name: str, force: bool = False,
                     _: Principal = operator) -> dict[str, Any]:
        return await tier.remove(name, force=force)

    return r
