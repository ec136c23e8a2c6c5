"""The agent's one MQTT session (`mqtt.py`: its own small MQTT 3.1.1 client; no MQTT library)."""

from edgecore.link.link import Link, LinkHandler, LinkStats, TlsFiles

__all__ = ["Link", "LinkHandler", "LinkStats", "TlsFiles"]
