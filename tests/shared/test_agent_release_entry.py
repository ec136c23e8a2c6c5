"""The `agent/-/release` desired entry and the `agentUpgrade` status (proposal 0006)."""

from __future__ import annotations

import pytest

from shared import entries
from shared.errors import ObjectError

K = entries.AGENT_RELEASE_KEY


def test_entry_round_trip() -> None:
    value = entries.agent_release_entry(version="0.9.1", image="reg:5000/edgefed/agent:0.9.1",
                                        upgrade="agent-0.9.1", deadline=60)
    assert entries.split_key(K) == (entries.AGENT, "-", "release")
    rel = entries.parse_agent_release(K, value)
    assert rel == entries.AgentRelease(version="0.9.1", image="reg:5000/edgefed/agent:0.9.1",
                                       upgrade="agent-0.9.1", deadline=60)


def test_rollback_entry_has_no_image_and_default_deadline() -> None:
    rel = entries.parse_agent_release(K, {"version": "0.9.0", "image": None,
                                          "upgrade": "agent-0.9.1"})
    assert rel.image is None
    assert rel.deadline == entries.DEFAULT_UPGRADE_DEADLINE


@pytest.mark.parametrize(("value", "field"), [
    ({"image": "x", "upgrade": "u"}, "version"),
    ({"version": "../x", "image": "x", "upgrade": "u"}, "version"),
    ({"version": "1", "image": "", "upgrade": "u"}, "image"),
    ({"version": "1", "image": "x"}, "upgrade"),
    ({"version": "1", "image": "x", "upgrade": "u", "deadline": 0}, "deadline"),
    ({"version": "1", "image": "x", "upgrade": "u", "deadline": True}, "deadline"),
])
def test_malformed_entry_names_the_field(value: dict[str, object], field: str) -> None:
    with pytest.raises(ObjectError) as err:
        entries.parse_agent_release(K, value)
    assert err.value.field == field
    assert K in err.value.message


def test_entry_must_be_a_mapping() -> None:
    with pytest.raises(ObjectError, match="must be a mapping"):
        entries.parse_agent_release(K, ["0.9.1"])


def test_status_round_trip_and_garbage_is_ignored() -> None:
    rep = entries.AgentUpgradeReport(version="0.9.1", phase="RolledBack",
                                     message="exit 3: boom", previous="0.9.0")
    assert entries.parse_agent_upgrade(entries.agent_upgrade_value(rep)) == rep
    assert entries.parse_agent_upgrade(None) is None
    assert entries.parse_agent_upgrade({"version": "1", "phase": "Exploded"}) is None
    assert entries.parse_agent_upgrade({"phase": "Healthy"}) is None
    long = entries.parse_agent_upgrade({"version": "1", "phase": "Failed",
                                        "message": "cause " + "x" * 5000, "previous": 7})
    assert long is not None
    assert long.message.startswith("cause ")
    assert len(long.message) == 2000
    assert long.previous is None
