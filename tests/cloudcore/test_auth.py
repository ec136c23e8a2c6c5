"""API tokens with roles: off by default, read-only < operator < admin when on."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_fixture import open_api
from cloudcore_fakes import FakeStore, add_node, deployment

from cloudcore.__main__ import parse_args
from cloudcore.auth import Auth, Role
from cloudcore.errors import ConfigError


async def test_auth_off_everything_open(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        r = await api.client.post("/api/v1/apply", json={"documents": [deployment()]})
        assert r.status_code == 200
        assert (await api.client.get("/api/v1/whoami")).json() == {
            "name": "anonymous", "role": "admin", "authEnabled": False}


async def test_roles(tmp_path: Path) -> None:
    async with open_api(tmp_path, auth_on=True) as api:
        admin, _ = api.auth.create_api_token(role=Role.ADMIN, name="root")
        c = api.client

        def h(tok: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tok}"}

        r = await c.get("/api/v1/nodes")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "missing bearer token" in r.json()["error"]
        assert (await c.get("/api/v1/nodes", headers=h("abc.def"))).status_code == 401
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/openapi.json")).status_code == 200

        tokens = {}
        for role in ("read-only", "operator"):
            r = await c.post("/api/v1/apitokens", json={"role": role, "name": role},
                             headers=h(admin))
            assert r.status_code == 200, r.text
            tokens[role] = r.json()["token"]
        ro, op = tokens["read-only"], tokens["operator"]
        add_node(api.fleet, "n1")

        assert (await c.get("/api/v1/nodes", headers=h(ro))).status_code == 200
        r = await c.post("/api/v1/apply", json={"documents": [deployment()]}, headers=h(ro))
        assert r.status_code == 403 and r.json()["reason"] == "Forbidden"
        assert "needs operator" in r.json()["error"]
        r = await c.post("/api/v1/apply", json={"documents": [deployment()]}, headers=h(op))
        assert r.status_code == 200
        assert (await c.post("/api/v1/nodes/n1/drain", headers=h(op))).status_code == 200
        assert (await c.delete("/api/v1/nodes/n1", headers=h(op))).status_code == 403
        assert (await c.post("/api/v1/jointokens", json={}, headers=h(op))).status_code == 403
        assert (await c.get("/api/v1/whoami", headers=h(op))).json()["role"] == "operator"
        assert (await c.delete("/api/v1/nodes/n1", headers=h(admin))).status_code == 200

        # the join endpoint is authenticated by its join token, not a bearer token
        jt = (await c.post("/api/v1/jointokens", json={}, headers=h(admin))).json()["token"]
        assert (await c.post("/api/v1/join", json={"token": jt, "name": "n2"})).status_code == 200

        tid = ro.split(".")[0]
        assert (await c.delete(f"/api/v1/apitokens/{tid}", headers=h(admin))).status_code == 200
        assert (await c.get("/api/v1/nodes", headers=h(ro))).status_code == 401
        listed = (await c.get("/api/v1/apitokens", headers=h(admin))).json()["items"]
        assert {t["name"] for t in listed} == {"root", "operator"}
        assert all("hash" not in t for t in listed)


def test_static_tokens_and_bootstrap(tmp_path: Path) -> None:
    f = tmp_path / "tokens.csv"
    f.write_text("# token,role,name\nsecret-ro,read-only,grafana\nsecret-op,operator\n")
    auth = Auth(store=FakeStore(), enabled=True)
    assert auth.load_static(f) == 2
    assert auth.authenticate("Bearer secret-ro").name == "grafana"
    assert auth.authenticate("Bearer secret-op").role is Role.OPERATOR
    token = auth.bootstrap(tmp_path / "admin.token")
    assert token and (tmp_path / "admin.token").read_text().strip() == token
    assert (tmp_path / "admin.token").stat().st_mode & 0o777 == 0o600
    assert auth.authenticate(f"Bearer {token}").role is Role.ADMIN
    assert auth.bootstrap(tmp_path / "again.token") is None  # one admin is enough
    f.write_text("x,root\n")
    with pytest.raises(ConfigError, match="unknown role"):
        Auth(store=FakeStore()).load_static(f)


def test_cli_flags_turn_auth_on(tmp_path: Path) -> None:
    assert parse_args([]).validate().auth.enabled is False
    s = parse_args(["--auth", "--advertise-mqtt", "mqtt.example:8883"]).validate()
    assert s.auth.enabled and s.broker_address() == ("mqtt.example", 8883)
    f = tmp_path / "t.csv"
    f.write_text("a,admin\n")
    assert parse_args(["--auth-tokens", str(f)]).validate().auth.enabled
    with pytest.raises(ConfigError, match="advertise_mqtt"):
        parse_args(["--advertise-mqtt", "nohost"]).validate()
