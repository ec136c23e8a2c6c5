"""`fedctl wait --for Running` waits for the current spec, not the old one's status."""

from __future__ import annotations

from fedctl import kinds
from fedctl.app import _condition


def pod(*, want: str | None, running: str | None, phase: str = "Running") -> dict:
    meta: dict = {"name": "web"}
    if want is not None:
        meta["annotations"] = {"edgefed.io/revision": want}
    return {"metadata": meta, "status": {"phase": phase, "revision": running}}


def test_running_the_old_revision_is_not_running_yet() -> None:
    _, ok, now = _condition(kinds.POD, "running")
    assert not ok(pod(want="b2", running="a1"))
    assert now(pod(want="b2", running="a1")) == "Running: updating to revision b2"
    assert ok(pod(want="b2", running="b2"))
    assert ok(pod(want=None, running="a1"))  # an older cloudcore: phase only
    assert not ok(pod(want="b2", running="b2", phase="Pending"))
    _, ok_failed, _ = _condition(kinds.POD, "failed")  # other phases: phase only
    assert ok_failed(pod(want="b2", running="a1", phase="Failed"))


def test_get_pods_says_updating_while_the_node_runs_an_older_revision() -> None:
    from fedctl.render import _pod_reason

    assert _pod_reason(pod(want="b2", running="a1")) == "Updating"
    stale = pod(want="b2", running="a1")
    stale["status"]["reason"] = "ImagePullBackOff"
    assert _pod_reason(stale) == "Updating (ImagePullBackOff)"
    assert _pod_reason(pod(want="b2", running="b2")) == "-"
    assert _pod_reason(pod(want="b2", running=None, phase="Pending")) == "-"  # not reported yet
    assert _pod_reason(pod(want=None, running="a1")) == "-"  # an older cloudcore
