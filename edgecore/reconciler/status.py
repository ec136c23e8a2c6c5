"""Pod phase from container statuses, with Kubernetes' semantics.

- Pending: some container has not started yet (creating, pulling, image errors).
- Running: every container has started at least once and at least one is running
  or is going to be restarted (including CrashLoopBackOff).
- Succeeded: every container terminated with exit code 0 and none will restart.
- Failed: every container terminated, at least one unsuccessfully, and none will
  restart (restartPolicy Never, or an exit the policy does not restart).

While init containers run (`initializing`) the pod is Pending with the reason kubectl
shows: `Init:1/2` (one of two done), `Init:CrashLoopBackOff`, `Init:Error`,
`Init:ExitCode:N`, `Init:<waiting reason>`; Failed with `Init:Error` when an init
container failed and the pod's restartPolicy is Never. A sidecar (an init container with
`restartPolicy: Always`) counts as done once it runs and its startup probe, if it has one,
passed; it then counts for readiness.
"""

from __future__ import annotations

from shared.pods import ContainerStatus, PodPhase, PodStatus

# Waiting reasons that mean "has never got going", so the pod is still Pending.
PENDING_REASONS = frozenset({
    "ContainerCreating", "ImagePullBackOff", "ErrImagePull", "CreateContainerError",
    "CreateContainerConfigError", "InvalidImageName", "InsufficientDevices",
    "NetworkNotReady", "PodInitializing",
})


def initializing(
    init: list[ContainerStatus], sidecar: list[bool],
) -> tuple[PodPhase, str, str | None] | None:
    """(phase, reason, message) while the init containers are not done, kubectl's way;
    None once every regular one completed and every sidecar runs."""
    for i, (st, side) in enumerate(zip(init, sidecar, strict=True)):
        if side and (st.state == "terminated"  # stopped after the app containers
                     or (st.state == "running" and st.started is not False)):
            continue
        if not side and st.state == "terminated" and st.exit_code == 0:
            continue
        if st.state == "terminated":  # failed, and the pod's restartPolicy is Never
            why = (f"Init:{st.reason}" if st.reason and st.reason != "Completed"
                   else f"Init:ExitCode:{st.exit_code}")
            return "Failed", why, st.message
        if st.reason and st.reason not in ("ContainerCreating", "PodInitializing"):
            return "Pending", f"Init:{st.reason}", st.message
        return "Pending", f"Init:{i}/{len(init)}", st.message  # e.g. "pulling IMAGE ..."
    return None


def pod_status(
    containers: list[ContainerStatus], *, revision: str, node: str,
    pod_ip: str | None = None, init: list[ContainerStatus] | None = None,
    sidecar: list[bool] | None = None,
) -> PodStatus:
    """The pod's status from its app containers' (`containers`) and, if it has any, its
    init containers' (`init`; `sidecar[i]`: the i-th is a sidecar)."""
    pending = [c for c in containers if c.state == "waiting" and c.reason in PENDING_REASONS
               and c.restart_count == 0]
    terminated = [c for c in containers if c.state == "terminated"]
    phase: PodPhase
    if pending:
        first = pending[0]
        phase, reason, message = "Pending", first.reason, first.message
    elif containers and len(terminated) == len(containers):
        ok = all(c.exit_code == 0 for c in terminated)
        phase, reason, message = ("Succeeded", None, None) if ok else ("Failed", None, None)
    else:
        phase, reason, message = "Running", None, None
    sidecars = [st for st, side in zip(init or [], sidecar or [], strict=False) if side]
    if init and all(c.state == "waiting" and c.reason == "PodInitializing"
                    for c in containers):  # once initialized, a sidecar's crash is no Init:
        early = initializing(init, sidecar or [False] * len(init))
        if early is not None:
            phase, reason, message = early
    return PodStatus(
        phase=phase, reason=reason, message=message, node_name=node,
        container_statuses=containers, revision=revision,
        ready=phase == "Running" and all(c.ready for c in [*containers, *sidecars]),
        pod_ip=pod_ip, init_container_statuses=init or None,
    )


def terminated_reason(exit_code: int | None, *, oom: bool) -> str:
    if oom:
        return "OOMKilled"
    if exit_code == 0:
        return "Completed"
    return "Error" if exit_code is not None else "Unknown"
