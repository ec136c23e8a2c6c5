"""Join tokens and POST /api/v1/join over a real store."""

from __future__ import annotations

from pathlib import Path

from api_fixture import open_api

from cloudcore.auth.secrets import mosquitto_verify


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_join_registers_node_with_labels_and_credentials(tmp_path: Path) -> None:
    clock = Clock()
    async with open_api(tmp_path, clock=clock) as api:
        r = await api.client.post("/api/v1/jointokens",
                                  json={"ttlSeconds": 3600, "labels": {"zone": "shop"}})
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        assert "hash" not in r.json() and r.json()["labels"] == {"zone": "shop"}

        r = await api.client.post("/api/v1/join", json={
            "token": token, "name": "edge-7", "labels": {"zone": "evil", "rack": "3"},
            "arch": "arm64"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["broker"] == {"host": "broker.example", "port": 8883}
        assert body["credentials"]["username"] == "edge-7"
        labels = body["node"]["metadata"]["labels"]
        assert labels["zone"] == "shop" and labels["rack"] == "3"  # the token's labels win
        assert labels["kubernetes.io/arch"] == "arm64"
        # stored hashed, in mosquitto's format, never in clear
        stored = api.store.load()["credentials"]["edge-7"]
        assert body["credentials"]["password"] not in str(stored)
        assert mosquitto_verify(body["credentials"]["password"], stored["hash"])
        assert api.auth.verify_credentials("edge-7", body["credentials"]["password"])
        assert token.split(".")[1] not in str(api.store.load()["tokens"])

        # the same name cannot join twice
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "edge-7"})
        assert r.status_code == 409 and "already joined" in r.json()["error"]

        # listing shows uses, never secrets
        items = (await api.client.get("/api/v1/jointokens")).json()["items"]
        assert items[0]["uses"] == 1 and "hash" not in items[0]

        # node delete removes the node and its credentials; it may join again
        r = await api.client.delete("/api/v1/nodes/edge-7")
        assert r.status_code == 200
        assert "edge-7" not in api.fleet.nodes and "edge-7" not in api.auth.credentials
        assert "edge-7" not in api.store.load()["credentials"]
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "edge-7"})
        assert r.status_code == 200

        # expiry and revocation give clear errors
        clock.now += 3601
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "edge-8"})
        assert r.status_code == 401
        assert r.json() == {"error": "join token expired", "field": "token",
                            "reason": "JoinTokenExpired"}
        tid = token.split(".")[0]
        assert (await api.client.delete(f"/api/v1/jointokens/{tid}")).status_code == 200
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "edge-8"})
        assert r.status_code == 401
        assert r.json()["error"] == "unknown or revoked join token"
        r = await api.client.post("/api/v1/join", json={"token": "nonsense", "name": "x"})
        assert r.json()["reason"] == "UnknownJoinToken"


async def test_join_validates_the_name(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        token = (await api.client.post("/api/v1/jointokens", json={})).json()["token"]
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "Bad_Name"})
        assert r.status_code == 422 and r.json()["field"] == "name"


async def test_tokens_and_credentials_survive_a_restart(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        token = (await api.client.post("/api/v1/jointokens", json={})).json()["token"]
        creds = (await api.client.post("/api/v1/join", json={"token": token, "name": "n1"})
                 ).json()["credentials"]
    async with open_api(tmp_path) as api:
        assert api.auth.verify_credentials("n1", creds["password"])
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "n2"})
        assert r.status_code == 200
        assert "kubernetes.io/hostname" in api.fleet.nodes["n2"].metadata.labels
        passwd = api.auth.mosquitto_passwd()
        assert passwd.startswith("n1:$7$101$") and "\nn2:$7$" in passwd
