"""The edge half of the sync protocol (DESIGN.md section 3), free of MQTT.

Two directions, one module each:
- `desired.py` (`SyncHandler`): what comes down. A Desired that applies is
  persisted before it is acked; a ReportAck trims the outbox; a Request goes to
  the request handler. It is the link's `LinkHandler`.
- `reporter.py` (`Reporter`): what goes up. Pod statuses, heartbeats and telemetry
  become numbered reports, persisted in the outbox before the link may send them.
  `Renewed` carries the pods whose entry came down again from the first to the
  second: their next status is reported even if unchanged.
- `responses.py` (`ResponseQueue`): the responses to the cloud's requests, in memory,
  bounded; the request handler puts, the sync handler drains them after the outbox.

Both talk to the cache, never to the network: the link carries what they produce.
"""

from edgecore.sync.desired import SyncHandler, SyncStats
from edgecore.sync.reporter import Renewed, Reporter
from edgecore.sync.responses import ResponseQueue

__all__ = ["Renewed", "Reporter", "ResponseQueue", "SyncHandler", "SyncStats"]
