"""How a desired pod's container maps onto a runtime container, and back.

The runtime keeps each container's annotations; they are the only link from a
running container back to its pod after an agent restart (adoption), so the keys
and the id scheme live here, in one place.
"""

from __future__ import annotations

import hashlib

from edgecore.runtime.types import ContainerSpec
from shared.entries import PodEntry
from shared.models import Container

ANN_POD = "edgefed.io/pod"  # pod key, e.g. pod/default/web
ANN_CONTAINER = "edgefed.io/container"  # container name within the pod
ANN_REVISION = "edgefed.io/revision"  # pod spec revision the container was created from
ANN_GRACE = "edgefed.io/grace-s"  # terminationGracePeriodSeconds, to stop it after deletion

MAX_ID = 100


def container_id(namespace: str, pod: str, container: str, revision: str) -> str:
    """A runtime id unique per (pod, container, revision).

    `_` never occurs in DNS-1123 names, so it separates the parts unambiguously
    (`a.b`+`c` and `a`+`b.c` differ). Long ids are shortened with a hash.
    """
    cid = f"{namespace}_{pod}_{container}_{revision[:6]}"
    if len(cid) <= MAX_ID:
        return cid
    digest = hashlib.sha256(cid.encode()).hexdigest()[:16]
    return f"{cid[:MAX_ID - 17]}.{digest}"


def container_spec(entry: PodEntry, c: Container) -> ContainerSpec:
    """The runtime spec of one container (raises runtime InvalidSpec if unusable)."""
    return ContainerSpec(
        name=c.name,
        image=c.image,
        command=tuple(c.command),
        args=tuple(c.args),
        env={e.name: e.value for e in c.env},
        working_dir=c.working_dir,
        cpu_limit_millis=c.resources.limit("cpu"),
        memory_limit_bytes=c.resources.limit("memory"),
        annotations={
            ANN_POD: entry.key,
            ANN_CONTAINER: c.name,
            ANN_REVISION: entry.revision,
            ANN_GRACE: str(entry.spec.termination_grace_period_seconds),
        },
    )
