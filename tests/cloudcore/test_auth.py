"""API tokens with roles (read-only < operator < admin), on by default; Secret values,
logs and exec need operator; bodies are capped before parsing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api_fixture import open_api
from cloudcore_fakes import FakeStore, add_node, deployment

from cloudcore.__main__ import parse_args
from cloudcore.auth import Auth, Role
from cloudcore.errors import ConfigError


async def test_auth_off_everything_open(tmp_path: Path) -> None:  # --insecure
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


def test_auth_is_on_unless_insecure(tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    s = parse_args([]).validate()
    assert s.auth.enabled is True and s.insecure is False
    s = parse_args(["--auth", "--advertise-mqtt", "mqtt.example:8883"]).validate()
    assert s.auth.enabled and s.broker_address() == ("mqtt.example", 8883)  # --auth: no-op
    assert parse_args(["--insecure"]).validate().auth.enabled is False
    monkeypatch.setenv("CLOUDCORE_INSECURE", "1")
    assert parse_args([]).validate().insecure
    monkeypatch.delenv("CLOUDCORE_INSECURE")
    f = tmp_path / "t.csv"
    f.write_text("a,admin\n")
    assert parse_args(["--auth-tokens", str(f)]).validate().auth.enabled
    with pytest.raises(ConfigError, match="advertise_mqtt"):
        parse_args(["--advertise-mqtt", "nohost"]).validate()
    s = parse_args(["--advertise-mqtt", "mqtts://mqtt.example:8883"]).validate()
    assert s.advertised_broker() == ("mqtt.example", 8883, True)
    s = parse_args(["--mqtt-tls", "--advertise-mqtt", "h:1883"]).validate()
    assert s.advertised_broker() == ("h", 1883, True)
    assert parse_args(["--advertise-mqtt", "mqtt://h:1"]).validate().advertised_broker()[2] is False


def _h(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "default"},
          "stringData": {"password": "hunter2"}}


@pytest.fixture
async def roles(tmp_path: Path) -> AsyncIterator[tuple[object, dict[str, str]]]:
    async with open_api(tmp_path, auth_on=True) as api:
        tokens = {r.label: api.auth.create_api_token(role=r, name=r.label)[0] for r in Role}
        yield api, tokens


async def test_secret_values_need_operator(roles: tuple[object, dict[str, str]]) -> None:
    api, tok = roles
    c = api.client  # type: ignore[attr-defined]
    r = await c.post("/api/v1/apply", json={"documents": [SECRET]}, headers=_h(tok["operator"]))
    assert r.status_code == 200, r.text
    r = await c.get("/api/v1/secrets/default/db", headers=_h(tok["read-only"]))
    assert r.status_code == 403 and "reading Secret values needs operator" in r.json()["error"]
    assert api.metrics.value("cloudcore_api_refused_total",  # type: ignore[attr-defined]
                             reason="Forbidden") == 1
    r = await c.get("/api/v1/secrets/default/db", headers=_h(tok["operator"]))
    assert r.status_code == 200 and r.json()["data"]["password"] == "aHVudGVyMg=="
    # lists and watches never carry values; reveal=true needs operator
    r = await c.get("/api/v1/secrets", headers=_h(tok["read-only"]))
    assert r.status_code == 200 and "aHVudGVyMg" not in r.text
    assert r.json()["items"][0]["data"] == {"password": "<redacted>"}
    r = await c.get("/api/v1/secrets", params={"reveal": "true"}, headers=_h(tok["read-only"]))
    assert r.status_code == 403
    r = await c.get("/api/v1/secrets", params={"reveal": "true"}, headers=_h(tok["operator"]))
    assert r.status_code == 200 and "aHVudGVyMg==" in r.text
    # other kinds stay readable by read-only
    assert (await c.get("/api/v1/configmaps/default/x", headers=_h(tok["read-only"]))
            ).status_code == 404


async def test_logs_and_exec_need_operator(roles: tuple[object, dict[str, str]]) -> None:
    api, tok = roles
    c = api.client  # type: ignore[attr-defined]
    ro = _h(tok["read-only"])
    r = await c.get("/api/v1/pods/default/web-0/log", headers=ro)
    assert r.status_code == 403 and "reading pod logs needs operator" in r.json()["error"]
    r = await c.post("/api/v1/pods/default/web-0/exec", json={"command": ["id"]}, headers=ro)
    assert r.status_code == 403
    # operator passes the role check (this in-process API has no hub: 503)
    r = await c.get("/api/v1/pods/default/web-0/log", headers=_h(tok["operator"]))
    assert r.status_code in (404, 503)


async def test_open_routes_hold_nothing_secret(roles: tuple[object, dict[str, str]]) -> None:
    api, tok = roles
    c = api.client  # type: ignore[attr-defined]
    await c.post("/api/v1/apply", json={"documents": [SECRET]}, headers=_h(tok["admin"]))
    r = await c.get("/api/v1/ca")
    assert r.status_code == 200 and r.json()["caCertHash"].startswith("sha256:")
    assert "PRIVATE" not in r.text
    metrics = (await c.get("/metrics")).text
    assert "hunter2" not in metrics and "aHVudGVyMg" not in metrics
    for t in tok.values():
        assert t.split(".")[1] not in metrics


async def test_bodies_over_the_cap_get_413(tmp_path: Path) -> None:
    async with open_api(tmp_path, auth_on=True) as api:
        admin, _ = api.auth.create_api_token(role=Role.ADMIN, name="a")
        big = b'{"documents": ["' + b"x" * (10 * 1024 * 1024) + b'"]}'
        r = await api.client.post("/api/v1/apply", content=big,
                                  headers={**_h(admin), "content-type": "application/json"})
        assert r.status_code == 413 and "over the limit of 3145728 bytes" in r.json()["error"]
        # refused before authentication and parsing: no token needed to be told
        r = await api.client.post("/api/v1/join", content=big)
        assert r.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted
            yield b'{"documents": ["'
            for _ in range(10):
                yield b"x" * (1024 * 1024)
            yield b'"]}'

        r = await api.client.post("/api/v1/apply", content=chunks(),
                                  headers={**_h(admin), "content-type": "application/json"})
        assert r.status_code == 413 and "request body over" in r.json()["error"]
        assert api.metrics.value("cloudcore_api_refused_total", reason="BodyTooLarge") == 3
        r = await api.client.post("/api/v1/apply", json={"documents": [deployment()]},
                                  headers=_h(admin))
        assert r.status_code == 200
