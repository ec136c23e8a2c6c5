"""List views cloudcore keeps encoded all the time.

`fedctl get nodes` asks for six fields of every node (its render.TABLE_FIELDS). In a
live fleet each report changes a node's `status.lastSeen`, so without help the list
after a quiet spell would encode all 100k nodes while the operator waits (about 0.45 s
of the server's time). Views listed recently are re-encoded in the background as
objects change (`cloudcore.api.listcache.ListCache.refresh_encoded`); the views named
here are, in addition, encoded once at start and never dropped. Cost: one ~4 us
encode per node report, about 1.5 % of a core for 100k nodes reporting every 30 s.
"""

from __future__ import annotations

NODE_TABLE = ("metadata.name", "spec.unschedulable", "status.ackedGen", "status.desiredGen",
              "status.lastSeen", "status.ready")
"""What `fedctl get nodes` asks for (fedctl's render.TABLE_FIELDS["Node"], sorted, as
the API sorts requested fields)."""

PINNED: frozenset[tuple[str, tuple[str, ...] | None]] = frozenset({("Node", NODE_TABLE)})
"""(kind, fields) views kept encoded from start to stop."""
