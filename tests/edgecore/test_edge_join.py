"""`edgecore join` / `run --state-dir` / `reset` against a real cloudcore API.

The API runs in a thread (uvicorn + LMDB store, no broker); join tokens are made
with `fedctl token create`, as an admin would.
"""

from __future__ import annotations

import base64
import json
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecore.__main__ import build_parser, main, settings_from_args
from fedctl.app import app as fedctl_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_cloud import Cloud, serve_cloud

# The API here serves plain HTTP (tests/e2e/e2e_cloud.py); the CA pin over HTTPS is
# tested in test_edge_join_tls.py.
INSECURE = ("--insecure-skip-tls-verify",)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from serve_cloud(tmp_path)


def token(cloud: Cloud, *args: str) -> str:
    r = CliRunner().invoke(fedctl_app, ["--server", cloud.url, "token", "create", *args])
    assert r.exit_code == 0, r.output
    return r.stdout.strip()


def test_join_writes_config_and_run_uses_it(cloud: Cloud, tmp_path: Path, capsys) -> None:
    tok = token(cloud, "--ttl", "1h", "--labels", "zone=shop", "--uses", "3")
    d = tmp_path / "edge"
    rc = main(["join", "--cloud", cloud.url, "--token", tok, "--name", "edge-7",
               "--label", "rack=3", "--label", "zone=evil", "--state-dir", str(d), *INSECURE])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "joined" in out.out and "edge-7" in out.out and "broker.example:8883" in out.out
    path = d / "edgecore.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    cfg = json.loads(path.read_text())
    assert len(base64.b64decode(cfg["key"])) == 32
    assert cfg["name"] == "edge-7"
    assert cfg["broker"] == {"host": "broker.example", "port": 8883}
    assert cfg["labels"] == {"rack": "3", "zone": "shop"}  # the token's label wins
    assert cfg["credentials"]["username"] == "edge-7"
    assert cloud.auth.verify_credentials("edge-7", cfg["credentials"]["password"])
    assert "edge-7" in cloud.fleet.nodes

    # run reads the file; flags override it
    s = settings_from_args(build_parser().parse_args(["run", "--state-dir", str(d)]))
    assert (s.node, s.mqtt_host, s.mqtt_port) == ("edge-7", "broker.example", 8883)
    assert (s.mqtt_username, s.mqtt_password) == ("edge-7", cfg["credentials"]["password"])
    assert s.labels == {"rack": "3", "zone": "shop"}
    assert cfg["credentials"]["password"] not in repr(s)
    assert s.node_key == base64.b64decode(cfg["key"]) and cfg["key"] not in repr(s)
    s = settings_from_args(build_parser().parse_args(
        ["run", "--config", str(path), "--state-dir", str(tmp_path / "other"),
         "--mqtt-host", "10.0.0.1", "--label", "rack=4"]))
    assert (s.node, s.mqtt_host, s.mqtt_port, s.labels["rack"]) == ("edge-7", "10.0.0.1",
                                                                    8883, "4")

    # joining twice into the same state dir is refused before calling the cloud
    rc = main(["join", "--cloud", cloud.url, "--token", tok, "--name", "edge-8",
               "--state-dir", str(d), *INSECURE])
    assert rc == 1 and "already joined as 'edge-7'" in capsys.readouterr().err

    # the same name from another device: 409, one line
    rc = main(["join", "--cloud", cloud.url, "--token", tok, "--name", "edge-7",
               "--state-dir", str(tmp_path / "edge-b"), *INSECURE])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "name 'edge-7' is taken" in err and "already joined" in err
    assert err.count("fedctl node delete") == 1  # the hint once (issue 16)
    assert not (tmp_path / "edge-b").exists()


def test_wrong_and_expired_token(cloud: Cloud, tmp_path: Path, capsys) -> None:
    d = tmp_path / "edge"
    rc = main(["join", "--cloud", cloud.url, "--token", "abcdef.000000000000000000000000",
               "--name", "e1", "--state-dir", str(d), *INSECURE])
    err = capsys.readouterr().err
    assert rc == 1
    assert err == ("edgecore: join token rejected: unknown or revoked join token "
                   "(ask an admin: fedctl token create)\n")
    assert not d.exists()

    tok = token(cloud, "--ttl", "1h")
    cloud.clock.now += 3601
    rc = main(["join", "--cloud", cloud.url, "--token", tok, "--name", "e1",
               "--state-dir", str(d), *INSECURE])
    err = capsys.readouterr().err
    assert rc == 1 and "join token rejected: join token expired" in err
    assert "e1" not in cloud.fleet.nodes


def test_unreachable_cloud_and_bad_name(tmp_path: Path, capsys) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["join", "--cloud", f"http://127.0.0.1:{port}", "--token", "a.b", "--name",
               "e1", "--state-dir", str(tmp_path / "e"), *INSECURE])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"edgecore: cannot reach cloudcore at http://127.0.0.1:{port}")
    assert "Traceback" not in err
    rc = main(["join", "--cloud", "http://x", "--token", "a.b", "--name", "Bad_Name",
               "--state-dir", str(tmp_path / "e")])
    assert rc == 2 and "invalid setting node" in capsys.readouterr().err


def test_plain_http_needs_the_insecure_flag(tmp_path: Path, capsys) -> None:
    rc = main(["join", "--cloud", "http://127.0.0.1:9", "--token", "a.b", "--name", "e1",
               "--state-dir", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 1 and "plain HTTP" in err and "--insecure-skip-tls-verify" in err
    assert not (tmp_path / "e").exists()


def test_run_without_name_or_config_is_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["run", "--state-dir", str(tmp_path)]) == 2
    assert "node: is required" in capsys.readouterr().err


def test_reset_removes_the_state_dir(cloud: Cloud, tmp_path: Path, capsys,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "edge"
    assert main(["join", "--cloud", cloud.url, "--token", token(cloud), "--name", "e2",
                 "--state-dir", str(d), *INSECURE]) == 0
    (d / "cache").mkdir()
    capsys.readouterr()
    # without --yes and without a terminal: refused
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["reset", "--state-dir", str(d)]) == 1
    assert "pass --yes" in capsys.readouterr().err and d.exists()
    # a directory that is not an agent's is never deleted
    other = tmp_path / "precious"
    other.mkdir()
    assert main(["reset", "--state-dir", str(other), "--yes"]) == 1
    assert other.exists()
    assert main(["reset", "--state-dir", str(d), "--yes"]) == 0
    assert "removed 0 container(s)" in capsys.readouterr().out
    assert not d.exists()
    # then it can join again under a new name
    assert main(["join", "--cloud", cloud.url, "--token", token(cloud), "--name", "e3",
                 "--state-dir", str(d), *INSECURE]) == 0


async def test_reset_stops_and_removes_real_containers(tmp_path: Path) -> None:
    """A running crun container under STATE_DIR/runtime is stopped and removed."""
    import asyncio
    import shutil
    import uuid

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fixtures_runtime import cleanup_root, conmon_pids, require_tools, spec, wait_state

    from edgecore.runtime import CrunRuntime
    from testbed.registry import LocalRegistry, seed_busybox

    require_tools()
    d = tmp_path / "edge"
    root = d / "runtime"
    cgroup_parent = f"/edgefed-test-{uuid.uuid4().hex[:8]}"
    with LocalRegistry() as reg:
        image = seed_busybox(reg)
        rt = CrunRuntime(root, insecure_registries=(reg.address,), cgroup_parent=cgroup_parent)
        try:
            await rt.pull(image)
            await rt.run("c1", spec(image, "c1", "sleep", "600"))
            await wait_state(rt, "c1", lambda st: st.status == "running")
            assert conmon_pids(root)
            rc = await asyncio.to_thread(main, ["reset", "--state-dir", str(d), "--yes"])
            assert rc == 0
            assert not d.exists() and not conmon_pids(root)
        finally:
            await cleanup_root(root, cgroup_parent)  # also removes the test's cgroup
            shutil.rmtree(d, ignore_errors=True)
