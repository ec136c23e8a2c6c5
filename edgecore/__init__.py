"""edgecore: the edge device agent.

It keeps a device converged on the desired set the cloud sends over MQTT, from a
local LMDB cache, whether or not the link is up. Components (one folder each):
`link` (MQTT session), `cache` (LMDB), `reconciler` (desired vs actual containers),
`runtime` (crun), wired together by `agent.Agent`.
"""

__version__ = "0.1.0"
