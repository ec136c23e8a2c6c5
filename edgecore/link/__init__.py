"""The agent's one MQTT session: the ONLY module importing aiomqtt."""

from edgecore.link.link import Link, LinkHandler, LinkStats, TlsFiles

__all__ = ["Link", "LinkHandler", "LinkStats", "TlsFiles"]
