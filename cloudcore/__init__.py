"""cloudcore: the cloud federation service of edgefed.

It holds the fleet's desired state (store), turns workloads into per-node desired
sets (fleet + scheduler), keeps every edge in sync over MQTT (synchub) and serves
the HTTP API (api). `service.run(settings)` wires them together.
"""
