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


PROTECTED_LABEL_PREFIXES: tuple[str, ...] = (
    "edgefed.io/", "node-role.kubernetes.io/", "node-restriction.kubernetes.io/")
"""Label prefixes the cloud owns on nodes (a NodeRestriction of our own, proposal 0002):
a node's report cannot set them on itself; the API and a join token can. A prefix
here matches the label's domain part (`edgefed.io/x`, also `a.edgefed.io/x`)."""


def protected_label(key: str, extra: tuple[str, ...] = ()) -> bool:
    """Whether a node may not set label `key` on itself: under a protected domain
    (`PROTECTED_LABEL_PREFIXES`, or their subdomains) or one of the admin's `extra`
    prefixes (a prefix ending in `/` is a domain, any other a plain key prefix)."""
    domain, sep, _ = key.rpartition("/")
    for prefix in (*PROTECTED_LABEL_PREFIXES, *extra):
        if prefix.endswith("/"):
            want = prefix[:-1]
            if sep and (domain == want or domain.endswith("." + want)):
                return True
        elif key.startswith(prefix):
            return True
    return False


def child_name(parent: str, suffix: str) -> str:
    """`{parent}-{suffix}`, shortened with a hash when over 253 characters."""
    name = f"{parent}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    head = name[: MAX_NAME - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}"
