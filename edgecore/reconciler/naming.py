"""How a desired pod's container maps onto a runtime container, and back.

The runtime keeps each container's annotations; they are the only link from a
running container back to its pod after an agent restart (adoption), so the keys
and the id scheme live here, in one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from edgecore.devices import Device
from edgecore.reconciler.env import expand
from edgecore.runtime.errors import InvalidSpec
from edgecore.runtime.types import ContainerSpec, Mount, Security
from shared.entries import PodEntry
from shared.pods import Container
from shared.policy import effective

ANN_POD = "edgefed.io/pod"  # pod key, e.g. pod/default/web
ANN_CONTAINER = "edgefed.io/container"  # container name within the pod
ANN_REVISION = "edgefed.io/revision"  # pod spec revision the container was created from
ANN_UID = "edgefed.io/uid"  # uid of the pod object it was created for (absent: unknown)
ANN_GRACE = "edgefed.io/grace-s"  # terminationGracePeriodSeconds, to stop it after deletion
ENV_DEVICES = "EDGEFED_DEVICES"  # container paths of the allocated accelerators, comma-separated

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


def container_spec(
    entry: PodEntry, c: Container, *, mounts: Sequence[Mount] = (),
    devices: Sequence[Device] = (), netns: str | None = None,
    env: Mapping[str, str] | None = None, seccomp_profile: str | None = None,
) -> ContainerSpec:
    """The runtime spec of one container (raises runtime InvalidSpec if unusable).

    `mounts` are the container's volume mounts, `devices` its allocated
    accelerators; their primary nodes' container paths are also listed in the
    EDGEFED_DEVICES environment variable unless the pod sets it. `netns` is the
    pod's network namespace (None: the host's). The securityContext (the
    container's over the pod's, `shared.policy.effective`) becomes the runtime's
    `Security`; `hostUsers: false` gives the pod a user namespace of its own. `env` is
    the container's built environment (`edgecore.reconciler.env.build`; None: its plain
    `env` values); `$(NAME)` in command and args is expanded from it, as in Kubernetes.
    `seccomp_profile` is the node's profile a `Localhost` seccompProfile names, already
    read and converted (`edgecore.runtime.seccomp.localhost`).
    """
    eff = effective(entry.spec, c)
    if eff.seccomp == "Localhost" and seccomp_profile is None:
        raise InvalidSpec(f"container {c.name!r}: seccompProfile Localhost "
                          f"({eff.seccomp_localhost}) needs the node's profile")
    security = Security(
        privileged=eff.privileged, run_as_non_root=eff.run_as_non_root,
        read_only_rootfs=eff.read_only_root_filesystem,
        no_new_privileges=not eff.allow_privilege_escalation,
        capabilities_add=eff.cap_add, capabilities_drop=eff.cap_drop, seccomp=eff.seccomp,
        seccomp_profile=seccomp_profile if eff.seccomp == "Localhost" else None,
        proc_unmasked=eff.proc_unmasked)
    if env is None:  # plain values only: each may refer to the ones before it
        env = {}
        for e in c.env:
            if e.value_from is None:
                env[e.name] = expand(e.value, env)
    env = dict(env)
    if devices and ENV_DEVICES not in env:
        env[ENV_DEVICES] = ",".join(d.paths[0].partition(":")[2] or d.paths[0]
                                    for d in devices)
    entries = list(dict.fromkeys(p for d in devices for p in d.paths))
    annotations = {
        ANN_POD: entry.key,
        ANN_CONTAINER: c.name,
        ANN_REVISION: entry.revision,
        ANN_GRACE: str(entry.spec.termination_grace_period_seconds),
    }
    if entry.uid is not None:
        annotations[ANN_UID] = entry.uid
    return ContainerSpec(
        name=c.name,
        image=c.image,
        command=tuple(expand(a, env) for a in c.command),
        args=tuple(expand(a, env) for a in c.args),
        env=env,
        working_dir=c.working_dir,
        cpu_limit_millis=c.resources.limit("cpu"),
        memory_limit_bytes=c.resources.limit("memory"),
        mounts=tuple(mounts),
        devices=tuple(entries),
        user=eff.user(),
        group=eff.run_as_group if eff.run_as_user is None else None,
        pull_policy=c.image_pull_policy,
        security=security,
        userns=None if eff.host_users else entry.key,
        supplemental_groups=(*eff.supplemental_groups,
                             *(() if eff.fs_group is None else (eff.fs_group,))),
        netns=netns,
        host_pid=eff.host_pid,
        host_ipc=eff.host_ipc,
        sysctls=dict(eff.sysctls),
        annotations=annotations,
    )

