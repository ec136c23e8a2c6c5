"""The sync hub: keeps every edge's desired set and report stream in step over MQTT.

`hub.SyncHub` is the protocol logic (resync, deltas with one in flight per node,
acks, idempotent reports, liveness, dropping bad input), written against a plain
`send(partition, topic, payload)` callable and the two small protocols of `ports`
(`NodeSink`, `DesiredSource`), so it can be driven by fakes in unit tests.
`mqtt` is the only module of cloudcore that imports the MQTT library.
"""

from cloudcore.synchub.hub import SyncHub

__all__ = ["SyncHub"]
