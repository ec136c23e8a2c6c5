"""Names and annotations the controller gives the objects it creates."""

from __future__ import annotations

import hashlib

from shared.models import MAX_NAME

OWNER = "edgefed.io/owner"
"""`Kind/namespace/name` of the workload that owns a pod."""
TEMPLATE_HASH = "edgefed.io/template-hash"
"""Hash of the pod template a pod was made from (detects template updates)."""
REVISION = "edgefed.io/revision"
"""The revision of a pod's current spec (what its desired entry carries). The pod
runs its current spec once `status.revision`, which the agent reports, equals it;
until then it is being updated (its status is still the old revision's)."""
SCHEDULED = "edgefed.io/scheduled"
"""The scheduler's last decision about a pod, in words (`fedctl describe` shows it)."""
HEARTBEAT = "edgefed.io/heartbeat"
"""A node's own heartbeat interval in seconds, as its agent reported it."""
APPLIED_LABELS = "edgefed.io/applied-labels"
"""Node labels set through the API (JSON), so a later apply can remove them again
without touching the labels the agent reports."""


def child_name(parent: str, suffix: str) -> str:
    """`{parent}-{suffix}`, shortened with a hash when over 253 characters."""
    name = f"{parent}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    head = name[: MAX_NAME - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}"
