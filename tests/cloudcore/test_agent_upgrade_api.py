"""AgentUpgrade through the API (roles: an operator may upgrade, read-only may only
read), the release key made beside the CA, and the join answer's releaseKeys."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

from api_fixture import open_api
from cloudcore_fakes import add_node

from cloudcore.auth import Role
from cloudcore.config import Settings
from cloudcore.release import open_release_key, release_key_path
from shared import release as rel

DOC = {"apiVersion": "edgefed.io/v1", "kind": "AgentUpgrade",
       "metadata": {"name": "agent-0.9.1"},
       "spec": {"version": "0.9.1", "image": "reg:5000/edgefed/agent:0.9.1",
                "maxUnavailable": 1}}


def _h(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def test_operator_upgrades_read_only_reads(tmp_path: Path) -> None:
    async with open_api(tmp_path, auth_on=True) as api:
        tok = {r.label: api.auth.create_api_token(role=r, name=r.label)[0] for r in Role}
        c = api.client
        for n in ("n1", "n2"):
            add_node(api.fleet, n)
            api.fleet.node_status(n, {"agentVersion": "0.9.0"})
        r = await c.post("/api/v1/apply", json={"documents": [DOC]},
                         headers=_h(tok["read-only"]))
        assert r.status_code == 403
        assert "needs operator" in r.json()["error"]
        r = await c.post("/api/v1/apply", json={"documents": [DOC]},
                         headers=_h(tok["operator"]))
        assert r.status_code == 200, r.text
        assert r.json()["results"][0] == {"kind": "AgentUpgrade", "namespace": None,
                                          "name": "agent-0.9.1", "action": "created"}
        r = await c.get("/api/v1/agentupgrades", headers=_h(tok["read-only"]))
        assert r.status_code == 200
        (item,) = r.json()["items"]
        assert item["status"]["phase"] == "Progressing"
        assert item["status"]["inProgress"] == 1
        r = await c.get("/api/v1/agentupgrades/agent-0.9.1", headers=_h(tok["read-only"]))
        assert r.status_code == 200
        assert r.json()["spec"]["image"] == DOC["spec"]["image"]
        assert api.fleet.desired["n1"].items["agent/-/release"][0]["version"] == "0.9.1"
        r = await c.delete("/api/v1/agentupgrades/agent-0.9.1", headers=_h(tok["read-only"]))
        assert r.status_code == 403
        r = await c.delete("/api/v1/agentupgrades/agent-0.9.1", headers=_h(tok["operator"]))
        assert r.status_code == 200
        assert "agent/-/release" not in api.fleet.desired["n1"].items
        r = await c.get("/api/v1/agentupgrades/agent-0.9.1", headers=_h(tok["read-only"]))
        assert r.status_code == 404


async def test_invalid_and_immutable_fields_are_named(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        c = api.client
        bad = {**DOC, "spec": {**DOC["spec"], "maxUnavailable": "150%"}}
        r = await c.post("/api/v1/apply", json={"documents": [bad]})
        assert r.status_code == 422
        assert "spec.maxUnavailable" in r.json()["error"]
        assert (await c.post("/api/v1/apply", json={"documents": [DOC]})).status_code == 200
        moved = {**DOC, "spec": {**DOC["spec"], "version": "1.0.0"}}
        r = await c.post("/api/v1/apply", json={"documents": [moved]})
        assert r.status_code == 422
        assert "spec.version cannot change" in r.json()["error"]


async def test_release_key_is_made_once_0600_and_given_at_join(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    public = open_release_key(pki)
    path = release_key_path(pki)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert open_release_key(pki) == public  # kept, never remade
    assert len(base64.b64decode(public)) == 32
    assert rel.public_key_b64(rel.load_key(path)) == public
    async with open_api(tmp_path, release_keys=(public,)) as api:
        token = (await api.client.post("/api/v1/jointokens", json={})).json()["token"]
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "edge-1"})
        assert r.status_code == 200, r.text
        assert r.json()["releaseKeys"] == [public]


def test_backup_keeps_the_release_key(tmp_path: Path) -> None:
    from cloudcore.__main__ import _backup_ca
    from cloudcore.auth.pki import FleetCA

    pki = tmp_path / "pki"
    FleetCA.open(pki)
    public = open_release_key(pki)
    assert _backup_ca(pki, tmp_path / "copy" / "pki")
    copy = release_key_path(tmp_path / "copy" / "pki")
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert open_release_key(copy.parent) == public


async def test_the_service_makes_the_release_key_and_counts_upgrades(
        service_factory: Any, settings: Settings, mosquitto: int) -> None:
    """cloudcore as shipped: release.key beside the CA at first start (0600), kept across
    restarts; /metrics counts AgentUpgrades by phase and their nodes by state."""
    import httpx

    settings.mqtt.port = mosquitto
    settings.forecast.enabled = False
    key = release_key_path(settings.store.state_dir / "pki")
    assert not key.exists()
    handle = service_factory()
    running = await handle.start()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (settings.store.state_dir / "pki" / "ca.crt").is_file()
    first = key.read_bytes()
    async with httpx.AsyncClient(base_url=running.url) as c:
        text = (await c.get("/metrics")).text
    assert 'cloudcore_agent_upgrades{phase="Complete"} 0' in text
    assert 'cloudcore_agent_upgrade_nodes{state="failed"} 0' in text
    await handle.stop()
    await service_factory().start()
    assert key.read_bytes() == first
