"""Join tokens and POST /api/v1/join over a real store (proposal 0002)."""

from __future__ import annotations

import base64
from pathlib import Path

from api_fixture import open_api
from cryptography import x509
from cryptography.x509.oid import NameOID

from cloudcore.auth.secrets import mosquitto_verify
from cloudcore.config import AuthSettings
from shared import seal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_join_registers_node_with_labels_and_credentials(tmp_path: Path) -> None:
    clock = Clock()
    async with open_api(tmp_path, clock=clock) as api:
        r = await api.client.post("/api/v1/jointokens",
                                  json={"ttlSeconds": 3600, "labels": {"zone": "shop"},
                                        "uses": 3})
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        assert "hash" not in r.json() and r.json()["labels"] == {"zone": "shop"}

        r = await api.client.post("/api/v1/join", json={
            "token": token, "name": "edge-7", "labels": {"zone": "evil", "rack": "3"},
            "arch": "arm64"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["broker"] == {"host": "broker.example", "port": 8883, "tls": True}
        # proposal 0007: the node's broker list (one broker without a tier) and its version
        assert body["brokers"] == ["mqtts://broker.example:8883"]
        assert body["broker_map_version"] == 1
        assert body["credentials"]["username"] == "edge-7"
        key = base64.b64decode(body["key"])
        assert len(key) == 32 and api.auth.node_key("edge-7") == key
        assert api.ca is not None and body["caCert"] == api.ca.cert_pem
        assert "clientCert" not in body  # only with --node-certs
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
        assert items[0]["uses"] == 1 and items[0]["maxUses"] == 3 and "hash" not in items[0]

        # node delete removes the node and its credentials; it may join again
        r = await api.client.delete("/api/v1/nodes/edge-7")
        assert r.status_code == 200
        assert "edge-7" not in api.fleet.nodes and "edge-7" not in api.auth.credentials
        assert "edge-7" not in api.store.load()["credentials"]
        assert api.auth.node_key("edge-7") is None  # the hub refuses its messages now
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "edge-7"})
        assert r.status_code == 200
        assert base64.b64decode(r.json()["key"]) != key  # a new key for the new identity

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
        token = (await api.client.post("/api/v1/jointokens", json={"uses": 2})).json()["token"]
        joined = (await api.client.post("/api/v1/join", json={"token": token, "name": "n1"})
                  ).json()
        creds = joined["credentials"]
        ca_hash = api.ca.hash if api.ca else None
    async with open_api(tmp_path) as api:
        assert api.auth.verify_credentials("n1", creds["password"])
        assert api.auth.node_key("n1") == base64.b64decode(joined["key"])
        assert api.ca is not None and api.ca.hash == ca_hash  # the same fleet CA
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "n2"})
        assert r.status_code == 200
        assert "kubernetes.io/hostname" in api.fleet.nodes["n2"].metadata.labels
        passwd = api.auth.mosquitto_passwd()
        assert passwd.startswith("n1:$7$101$") and "\nn2:$7$" in passwd
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "n3"})
        assert r.json()["reason"] == "JoinTokenUsedUp"  # the use count survived too


async def test_one_use_token_bound_name_and_ca_pin(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        assert api.ca is not None
        r = await api.client.post("/api/v1/jointokens", json={})
        token = r.json()["token"]
        tid, secret, pin = token.split(".")
        assert pin == api.ca.pin and r.json()["caCertHash"] == api.ca.hash
        assert r.json()["maxUses"] == 1  # the default
        assert (await api.client.post("/api/v1/join", json={"token": token, "name": "a"})
                ).status_code == 200
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "b"})
        assert r.status_code == 401
        assert r.json() == {"error": "join token used up", "field": "token",
                            "reason": "JoinTokenUsedUp"}
        assert "b" not in api.fleet.nodes
        assert api.metrics.value("cloudcore_joins_total", result="JoinTokenUsedUp") == 1
        assert api.metrics.value("cloudcore_joins_total", result="Joined") == 1

        # a token pinning another CA is refused; without the pin part it is accepted
        token = (await api.client.post("/api/v1/jointokens", json={"uses": 2})).json()["token"]
        tid, secret, _ = token.split(".")
        r = await api.client.post("/api/v1/join",
                                  json={"token": f"{tid}.{secret}.{'0' * 64}", "name": "c"})
        assert r.status_code == 401 and r.json()["reason"] == "CaPinMismatch"
        r = await api.client.post("/api/v1/join", json={"token": f"{tid}.{secret}", "name": "c"})
        assert r.status_code == 200

        # bound to a name: another name is refused (and does not use the token up)
        r = await api.client.post("/api/v1/jointokens", json={"name": "edge-9"})
        bound = r.json()["token"]
        assert r.json()["name"] == "edge-9"
        r = await api.client.post("/api/v1/join", json={"token": bound, "name": "edge-8"})
        assert r.status_code == 403 and r.json()["reason"] == "JoinTokenBound"
        assert "edge-9" in r.json()["error"]
        r = await api.client.post("/api/v1/join", json={"token": bound, "name": "edge-9"})
        assert r.status_code == 200
        # a token cannot be bound to a name no node may have
        r = await api.client.post("/api/v1/jointokens", json={"name": "cloudcore"})
        assert r.status_code == 422 and r.json()["field"] == "name"
        r = await api.client.post("/api/v1/jointokens", json={"uses": 0})
        assert r.status_code == 422 and r.json()["field"] == "uses"


async def test_reserved_names_are_refused(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        token = (await api.client.post("/api/v1/jointokens", json={"uses": 10})).json()["token"]
        for name in ("cloudcore", "cloudcore-sub", "edgefed-1", "mosquitto", "admin", "root"):
            r = await api.client.post("/api/v1/join", json={"token": token, "name": name})
            assert r.status_code == 422, name
            assert r.json()["field"] == "name" and "reserved" in r.json()["error"]
        r = await api.client.post("/api/v1/join", json={"token": token, "name": "cloudcore_sub"})
        assert r.status_code == 422  # '_' is never a node name: services only
        assert not api.auth.credentials
        assert api.metrics.value("cloudcore_joins_total", result="ReservedName") == 7
        assert api.auth.join_tokens[token.split(".")[0]]["uses"] == 0


async def test_joins_are_rate_limited_per_address(tmp_path: Path) -> None:
    cfg = AuthSettings(join_rate=1.0, join_burst=3)
    async with open_api(tmp_path, auth_settings=cfg) as api:
        for _ in range(3):  # bad tokens count too: guessing is what the limit stops
            r = await api.client.post("/api/v1/join", json={"token": "x.y", "name": "n"})
            assert r.status_code == 401
        r = await api.client.post("/api/v1/join", json={"token": "x.y", "name": "n"})
        assert r.status_code == 429 and r.json()["reason"] == "TooManyRequests"
        assert 1 <= int(r.headers["retry-after"]) <= 60


async def test_node_certificates_and_renewal(tmp_path: Path) -> None:
    clock = Clock()
    clock.now = 1_800_000_000.0
    async with open_api(tmp_path, clock=clock,
                        auth_settings=AuthSettings(node_certs=True)) as api:
        assert api.ca is not None
        token = (await api.client.post("/api/v1/jointokens", json={})).json()["token"]
        body = (await api.client.post("/api/v1/join", json={"token": token, "name": "e1"})
                ).json()
        cert = x509.load_pem_x509_certificate(body["clientCert"]["cert"].encode())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "e1"
        cert.verify_directly_issued_by(api.ca.cert)
        assert body["clientCert"]["notAfter"] == int(cert.not_valid_after_utc.timestamp())
        assert "PRIVATE KEY" in body["clientCert"]["key"]
        stored = api.store.load()["credentials"]["e1"]
        assert stored["certs"][0]["serial"] == str(cert.serial_number)
        assert "PRIVATE KEY" not in str(stored)

        k_up = seal.NodeKeys.derive(base64.b64decode(body["key"])).up
        ts = int(clock.now)
        url = "/api/v1/nodes/e1/certificate"
        r = await api.client.post(url, json={"ts": ts, "mac": seal.renew_mac(k_up, "e1", ts)})
        assert r.status_code == 200, r.text
        renewed = x509.load_pem_x509_certificate(r.json()["cert"].encode())
        assert renewed.serial_number != cert.serial_number
        # a replay, a stale ts, another node's name and a wrong key are all refused
        r = await api.client.post(url, json={"ts": ts, "mac": seal.renew_mac(k_up, "e1", ts)})
        assert r.status_code == 401 and "replay" in r.json()["error"]
        old = ts - 3600
        r = await api.client.post(url, json={"ts": old, "mac": seal.renew_mac(k_up, "e1", old)})
        assert r.status_code == 401 and r.json()["field"] == "ts"
        r = await api.client.post("/api/v1/nodes/e2/certificate",
                                  json={"ts": ts + 1, "mac": seal.renew_mac(k_up, "e2", ts + 1)})
        assert r.status_code == 401
        wrong = seal.NodeKeys.derive(b"k" * 32).up
        r = await api.client.post(url, json={"ts": ts + 1,
                                             "mac": seal.renew_mac(wrong, "e1", ts + 1)})
        assert r.status_code == 401 and r.json()["field"] == "mac"
        # a deleted node cannot renew, and both its certificates are revoked (CRL)
        assert (await api.client.delete("/api/v1/nodes/e1")).status_code == 200
        serials = {s for s, _ in api.auth.revoked_serials()}
        assert serials == {cert.serial_number, renewed.serial_number}
        crl = x509.load_pem_x509_crl(api.ca.crl(api.auth.revoked_serials()))
        assert crl.is_signature_valid(api.ca.cert.public_key())  # type: ignore[arg-type]
        assert crl.get_revoked_certificate_by_serial_number(renewed.serial_number)
        assert "crl/" + str(cert.serial_number) in str(api.store.load()["tokens"])
        clock.now += 91 * 86400  # expired certificates leave the CRL
        assert api.auth.revoked_serials() == []
        clock.now -= 91 * 86400
        r = await api.client.post(url, json={"ts": ts + 2,
                                             "mac": seal.renew_mac(k_up, "e1", ts + 2)})
        assert r.status_code == 401


async def test_renewal_needs_node_certs_on(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        r = await api.client.post("/api/v1/nodes/e1/certificate", json={"ts": 1, "mac": "0" * 64})
        assert r.status_code == 409 and "--node-certs" in r.json()["error"]
