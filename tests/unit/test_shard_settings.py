"""`cloudcore --shard` flags (issue 14 part 2): what they set, and what is refused before
anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudcore.__main__ import main, parse_args
from cloudcore.errors import ConfigError


def test_shard_flags_set_the_cluster_settings(tmp_path: Path) -> None:
    pw = tmp_path / "nats.password"
    pw.write_text("s3cret\n")
    s = parse_args(["--shard", "S1", "--nats", "tls://a:4222", "--nats", "tls://b:4222",
                    "--nats-user", "cloudcore", "--nats-password-file", str(pw),
                    "--lease-period", "10", "--nats-replicas", "3"]).validate()
    c = s.cluster
    assert c.enabled and c.shard == "S1"
    assert c.nats_urls == ("tls://a:4222", "tls://b:4222")
    assert (c.nats_user, c.nats_password) == ("cloudcore", "s3cret")
    assert (c.lease_period, c.replicas, c.nats_ca_file) == (10.0, 3, None)


def test_the_embedded_default_has_no_shard() -> None:
    s = parse_args([]).validate()
    assert not s.cluster.enabled and s.cluster.nats_urls == ()


def test_refused_shard_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--nats needs --shard"):
        parse_args(["--nats", "tls://a:4222"])
    with pytest.raises(ConfigError, match="at least one --nats"):
        parse_args(["--shard", "S1"]).validate()
    with pytest.raises(ConfigError, match=r"cluster\.shard"):
        parse_args(["--shard", "bad name", "--nats", "tls://a:4222"]).validate()
    with pytest.raises(ConfigError, match="together exceed"):
        parse_args(["--shard", "S" * 30, "--mqtt-username", "u" * 20,
                    "--nats", "tls://a:4222"]).validate()
    assert main(["--shard", "S1"]) == 2
    assert "--nats" in capsys.readouterr().err
