"""Pod phase from container statuses, with Kubernetes' semantics.

- Pending: some container has not started yet (creating, pulling, image errors).
- Running: every container has started at least once and at least one is running
  or is going to be restarted (including CrashLoopBackOff).
- Succeeded: every container terminated with exit code 0 and none will restart.
- Failed: every container terminated, at least one unsuccessfully, and none will
  restart (restartPolicy Never, or an exit the policy does not restart).
"""

from __future__ import annotations

from shared.pods import ContainerStatus, PodStatus

# Waiting reasons that mean "has never got going", so the pod is still Pending.
PENDING_REASONS = frozenset({
    "ContainerCreating", "ImagePullBackOff", "ErrImagePull", "CreateContainerError",
    "CreateContainerConfigError", "InvalidImageName", "InsufficientDevices",
    "NetworkNotReady",
})


def pod_status(
    containers: list[ContainerStatus], *, revision: str, node: str,
    pod_ip: str | None = None,
) -> PodStatus:
    pending = [c for c in containers if c.state == "waiting" and c.reason in PENDING_REASONS
               and c.restart_count == 0]
    terminated = [c for c in containers if c.state == "terminated"]
    if pending:
        first = pending[0]
        phase, reason, message = "Pending", first.reason, first.message
    elif containers and len(terminated) == len(containers):
        ok = all(c.exit_code == 0 for c in terminated)
        phase, reason, message = ("Succeeded", None, None) if ok else ("Failed", None, None)
    else:
        phase, reason, message = "Running", None, None
    return PodStatus(
        phase=phase, reason=reason, message=message, node_name=node,
        container_statuses=containers, revision=revision,
        ready=phase == "Running" and all(c.ready for c in containers),
        pod_ip=pod_ip,
    )


def terminated_reason(exit_code: int | None, *, oom: bool) -> str:
    if oom:
        return "OOMKilled"
    if exit_code == 0:
        return "Completed"
    return "Error" if exit_code is not None else "Unknown"
