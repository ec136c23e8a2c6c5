"""`python -m testbed.bench`: the options `testbed bench` does not carry are checked
before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed import bench


def test_cloud_tree_must_hold_a_cloudcore(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["sync", "--nodes", "10", "--cloud-tree", str(tmp_path)])
    assert exc.value.code == 2
    assert "no cloudcore/__main__.py there" in capsys.readouterr().err


def test_cloud_pythonpath_is_set_for_the_block_only(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    with bench._cloud_pythonpath(tmp_path):
        assert os.environ["PYTHONPATH"] == str(tmp_path)
        assert os.environ["PYTHONSAFEPATH"] == "1"
    assert os.environ["PYTHONPATH"] == "/somewhere"
    assert "PYTHONSAFEPATH" not in os.environ


def test_bench_sync_runs_no_anonymous_broker_unless_asked(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Secure by default: without --mode only the secure fleet runs, at any size; the
    insecure fleet (an anonymous broker) runs only when named, and says so loudly."""
    from testbed.bench import _mode_label, sync_modes

    for nodes in (100, 5_000, 20_000, 100_000):
        assert _mode_label(sync_modes(None), nodes) == ("secure",)
    assert capsys.readouterr().err == ""
    assert _mode_label(sync_modes("both"), 100) == ("secure", "insecure")
    assert "ANONYMOUS broker" in capsys.readouterr().err
