"""`Fleet.stop` runs every step even when one fails: a CI run's container cleanup raised
once, the fleet's network namespaces stayed, and every later fleet of the run failed to
start on them ("RTNETLINK answers: File exists")."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.fleet import Agent, Fleet, FleetSettings


class _Proc:
    def __init__(self, calls: list[str], name: str, fail: bool = False) -> None:
        self.calls, self.name, self.fail = calls, name, fail

    def stop(self) -> None:
        self.calls.append(f"stop {self.name}")
        if self.fail:
            raise RuntimeError(f"{self.name} would not stop")


class _Net:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def close(self) -> None:
        self.calls.append("net closed")


def test_a_failing_step_does_not_leave_the_rest_behind(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    f = Fleet(FleetSettings(nodes=0, workdir=tmp_path, use_netns=False))
    f.agents = [Agent(f"n{i}", tmp_path / f"n{i}", _Proc(calls, f"n{i}", fail=i == 0),  # type: ignore[arg-type]
                      None, "127.0.0.1") for i in range(2)]
    f.cloud = _Proc(calls, "cloud")  # type: ignore[assignment]
    f.net = _Net(calls)  # type: ignore[assignment]

    def clean(a: Agent) -> None:
        calls.append(f"clean {a.name}")
        raise RuntimeError("container 'x' does not exist")

    monkeypatch.setattr(f, "_clean_agent", clean)
    with pytest.raises(RuntimeError, match="n0 would not stop"):  # the first failure
        f.stop()
    assert calls == ["stop n0", "stop n1", "clean n0", "clean n1", "stop cloud", "net closed"]
    assert f.agents == []
