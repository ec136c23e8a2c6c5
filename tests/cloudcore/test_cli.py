"""The `cloudcore` binary: settings validation, the listening line, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cloudcore.__main__ import main, parse_args
from cloudcore.config import Settings
from cloudcore.errors import ConfigError
from testbed.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_settings_validation_names_the_field() -> None:
    s = Settings()
    s.mqtt.port = 0
    with pytest.raises(ConfigError) as err:
        s.validate()
    assert err.value.field == "mqtt.port"
    assert parse_args(["--heartbeat", "5", "--http-port", "0"]).sync.heartbeat == 5
    assert main(["--heartbeat", "-1"]) == 2


def test_broker_login_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\nignored second line\n")
    s = parse_args(["--mqtt-username", "cloud", "--mqtt-password-file", str(secret)])
    assert (s.mqtt.username, s.mqtt.password) == ("cloud", "hunter2")
    assert "hunter2" not in repr(s)  # never printed with the settings
    monkeypatch.setenv("CLOUDCORE_MQTT_USERNAME", "from-env")
    monkeypatch.setenv("CLOUDCORE_MQTT_PASSWORD_FILE", str(secret))
    assert parse_args([]).validate().mqtt.username == "from-env"
    monkeypatch.delenv("CLOUDCORE_MQTT_USERNAME")
    s = parse_args([]).validate()  # the service identity defaults to cloudcore
    assert (s.mqtt.identity("sub"), s.mqtt.identity("pub0")) == ("cloudcore_sub",
                                                                 "cloudcore_pub0")
    with pytest.raises(ConfigError) as err:
        parse_args(["--mqtt-username", "a/b"]).validate()
    assert err.value.field == "mqtt.username"
    with pytest.raises(ConfigError) as err:
        parse_args(["--mqtt-client-cert"]).validate()
    assert err.value.field == "mqtt.client_cert"
    (tmp_path / "empty").write_text("\n")
    assert main(["--mqtt-username", "c", "--mqtt-password-file", str(tmp_path / "empty")]) == 2


@pytest.mark.parametrize("insecure", [False, True])
def test_binary_starts_and_stops_on_sigterm(mosquitto: int, tmp_path: Path,
                                            insecure: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "cloudcore",
         "--state-dir", str(tmp_path / "s"),
         "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mosquitto),
         "--http-port", str(free_port()), "--log-level", "WARNING",
         *(["--insecure"] if insecure else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        scheme = "http" if insecure else "https"
        assert line.startswith(f"cloudcore listening on {scheme}://127.0.0.1:"), line
        if not insecure:  # the CA clients pin is printed with its hash
            assert proc.stdout.readline().startswith("fleet CA ")
            assert (tmp_path / "s" / "admin.token").exists()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait()
            code = None
        err = proc.stderr.read() if proc.stderr else ""
        assert code == 0, err
        assert ("RUNNING INSECURE" in err) is insecure
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_backup_keeps_the_fleet_ca(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from cloudcore.auth.pki import FleetCA
    from cloudcore.config import StoreSettings
    from cloudcore.store import Store

    state = tmp_path / "s"
    async with Store(StoreSettings(state_dir=state)):
        pass
    ca = FleetCA.open(state / "pki")
    assert main(["backup", "--state-dir", str(state), str(tmp_path / "b")]) == 0
    copy = tmp_path / "b" / "pki"
    assert FleetCA.open(copy).hash == ca.hash
    assert (copy / "ca.key").stat().st_mode & 0o777 == 0o600
    assert copy.stat().st_mode & 0o777 == 0o700
    assert "fleet CA" in capsys.readouterr().out
