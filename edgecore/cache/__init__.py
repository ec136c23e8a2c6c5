"""The agent's durable memory, in one LMDB environment: the ONLY module importing lmdb.

What survives a power cut here is what lets the device keep running its pods
for days without the cloud, and what makes acks and report seqs trustworthy.
"""

from edgecore.cache.store import AppendResult, Cache, OutboxKind

__all__ = ["AppendResult", "Cache", "OutboxKind"]
