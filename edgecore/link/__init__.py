"""The agent's one MQTT session: the ONLY module importing aiomqtt."""

from edgecore.link.brokers import BrokerList, BrokerSource, Endpoint
from edgecore.link.link import Link, LinkHandler, LinkStats, TlsFiles

__all__ = ["BrokerList", "BrokerSource", "Endpoint", "Link", "LinkHandler", "LinkStats", "TlsFiles"]
