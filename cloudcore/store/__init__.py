"""The cloudcore store: the only module that imports lmdb.

One LMDB environment with a named database per kind. Reads happen once, at start
(`load()`): cloudcore serves everything from memory. Writes are write-behind and
batched: callers enqueue puts and deletes, a writer task commits them in one write
transaction every `batch_interval` seconds or `batch_max_ops` operations, and
callers that need durability await `flush()` (force a commit now) or the future
from `durable()` (wait for the batch that holds what they enqueued: group commit).

Secret values are encrypted at rest (`encryption.py`: a key file, keys named per record,
`rotate_encryption_key`); the state directory is 0700 and the LMDB files 0600.
"""

from cloudcore.store.encryption import KeyRing
from cloudcore.store.lmdbstore import DBS, Rotation, Store, backup, rotate_encryption_key

__all__ = ["DBS", "KeyRing", "Rotation", "Store", "backup", "rotate_encryption_key"]
