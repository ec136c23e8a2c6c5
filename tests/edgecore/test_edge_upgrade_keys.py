"""Release keys on the node (proposal 0006): `edgecore join` keeps the join answer's
`releaseKeys` in edgecore.json as `release_keys`; `edgecore run` trusts those and the
`--release-key` files (base64 or PEM), and refuses an unreadable or malformed one with
a clear setting error."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edgecore.__main__ import build_parser, main, settings_from_args
from edgecore.join import JoinedConfig, config_path, load_config, write_config
from shared import release


def joined(d: Path, keys: tuple[str, ...]) -> None:
    write_config(config_path(d), JoinedConfig(
        name="edge-1", broker_host="127.0.0.1", broker_port=1883,
        key=base64.b64encode(bytes(32)).decode(), release_keys=keys))


def test_join_config_keeps_release_keys_and_run_trusts_them_and_flags(tmp_path: Path) -> None:
    a = release.generate_key(tmp_path / "a.key")
    b = release.generate_key(tmp_path / "b.key")
    d = tmp_path / "state"
    joined(d, (release.public_key_b64(a),))
    assert load_config(config_path(d)).release_keys == (release.public_key_b64(a),)
    pem = tmp_path / "b.pem"
    pem.write_bytes(b.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    again = tmp_path / "a.pub"
    again.write_text(release.public_key_b64(a) + "\n")
    s = settings_from_args(build_parser().parse_args(
        ["run", "--state-dir", str(d), "--release-key", str(pem),
         "--release-key", str(again)]))
    raw = [release.parse_public_key(release.public_key_b64(k)) for k in (a, b)]
    assert s.release_keys == tuple(raw)  # the joined one, then the flag's, no duplicate
    assert s.agent_dir == d / "agent"


def test_no_keys_is_allowed_and_a_bad_key_file_is_a_setting_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "state"
    joined(d, ())
    s = settings_from_args(build_parser().parse_args(["run", "--state-dir", str(d)]))
    assert s.release_keys == ()
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    assert main(["run", "--state-dir", str(d), "--release-key", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "release_key" in err and str(bad) in err and "base64" in err
    assert main(["run", "--state-dir", str(d), "--release-key",
                 str(tmp_path / "missing.pub")]) == 2
    assert "missing.pub" in capsys.readouterr().err
