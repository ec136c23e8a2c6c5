"""The `Auth` registry: join tokens, API tokens and node credentials (see package doc).

Store layout (named databases of the cloudcore store):
    tokens       `join/<id>` -> join token record, `api/<id>` -> API token record,
                 `crl/<serial>` -> {"serial", "notAfter", "node"}: a revoked client
                 certificate, kept until it expires (the broker's CRL)
    credentials  `<node>`    -> {"username", "hash" ($7$ mosquitto format), "created",
                                 "key" (base64 of the 32-byte node key), "certs"
                                 ([{serial, notAfter}] of its unexpired client
                                 certificates, with --node-certs)}

A join token record: {"id", "hash", "created", "expires", "labels", "description",
"uses" (joins made with it), "maxUses" (default 1; a record without it, from before
use limits, counts as 1), "name" (the one node name it may join, or null)}.

The node key is kept in clear in the store (0700 directory): it is a shared secret for
HMAC and AEAD, so a hash would not do. Deleting a node forgets it at once; the sync hub
asks `node_key()` for every message, so a forgotten node's messages are refused.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

from cloudcore.auth import secrets as sec
from cloudcore.auth.errors import (
    CaPinMismatch,
    Forbidden,
    JoinRefused,
    JoinTokenBound,
    JoinTokenExpired,
    JoinTokenUsedUp,
    Unauthenticated,
    UnknownJoinToken,
)
from cloudcore.errors import ConfigError, NotFound
from shared import seal

RENEW_SKEW = 300.0
"""Seconds a renewal call's `ts` may be away from cloudcore's clock."""

log = logging.getLogger("cloudcore.auth")


class Role(IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    READ_ONLY = 0
    OPERATOR = 1
    ADMIN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str) -> Role:
        for role in cls:
            if role.label == text.strip().lower() or role.name == text.strip().upper():
                return role
        raise ValueError(f"unknown role {text!r}; use admin, operator or read-only")


@dataclass(frozen=True)
class Principal:
    """Who made a request: a token's name and role (`anonymous` admin when auth is off)."""

    name: str
    role: Role
    token_id: str | None = None


ANONYMOUS = Principal(name="anonymous", role=Role.ADMIN)


@dataclass(frozen=True)
class NodeCredentials:
    """What a node gets once, at join: its broker login and its node key."""

    username: str
    password: str = field(repr=False)
    key: bytes = field(repr=False)

    @property
    def key_b64(self) -> str:
        return base64.b64encode(self.key).decode()


class Writer(Protocol):
    def put(self, db: str, key: str, value: Any) -> None: ...
    def delete(self, db: str, key: str) -> None: ...


class Auth:
    """All secrets cloudcore knows, hashed; `enabled` says whether the API checks them."""

    def __init__(self, *, store: Writer, enabled: bool = True,
                 clock: Callable[[], float] = time.time,
                 on_credentials: Callable[[], None] | None = None,
                 on_revoked: Callable[[str], None] | None = None) -> None:
        """`on_credentials()` runs after any change of node credentials or revoked
        certificates (rewrite the broker files); `on_revoked(node)` after a node that
        had client certificates is forgotten (close its broker session)."""
        self.store = store
        self.enabled = enabled
        self.clock = clock
        self.on_credentials = on_credentials
        self.on_revoked = on_revoked
        self.join_tokens: dict[str, dict[str, Any]] = {}
        self.api_tokens: dict[str, dict[str, Any]] = {}
        self.credentials: dict[str, dict[str, Any]] = {}
        self._static: dict[str, Principal] = {}  # sha256(token) -> principal
        self._keys: dict[str, bytes] = {}  # node -> node key (decoded from credentials)
        self.revoked: dict[str, dict[str, Any]] = {}  # serial -> revoked cert record
        self._renewed: dict[str, int] = {}  # node -> ts of its last accepted renewal

    # -- loading -------------------------------------------------------------------

    def load(self, records: dict[str, dict[str, Any]]) -> None:
        for key, rec in records.get("tokens", {}).items():
            kind, _, tid = key.partition("/")
            if kind == "join":
                self.join_tokens[tid] = rec
            elif kind == "api":
                self.api_tokens[tid] = rec
            elif kind == "crl":
                self.revoked[tid] = rec
        self.credentials = dict(records.get("credentials", {}))
        self._keys = {}
        for node, rec in self.credentials.items():
            key = _decode_key(rec.get("key"))
            if key is not None:
                self._keys[node] = key

    def load_static(self, path: Path) -> int:
        """Read `token,role[,name]` lines; returns how many tokens were read."""
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"auth.tokens_file: cannot read {path}: {exc}",
                              field="auth.tokens_file") from exc
        for no, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 2 or not parts[0]:
                raise ConfigError(f"auth.tokens_file {path}:{no}: expected token,role[,name]",
                                  field="auth.tokens_file")
            try:
                role = Role.parse(parts[1])
            except ValueError as exc:
                raise ConfigError(f"auth.tokens_file {path}:{no}: {exc}",
                                  field="auth.tokens_file") from None
            name = parts[2] if len(parts) > 2 and parts[2] else f"static-{no}"
            self._static[sec.sha256(parts[0])] = Principal(name=name, role=role)
        return len(self._static)

    def bootstrap(self, path: Path) -> str | None:
        """Create a first admin token if none exists; writes it to `path` (0600)."""
        now = self.clock()
        if any(Role.parse(r["role"]) is Role.ADMIN and not _expired(r, now)
               for r in self.api_tokens.values()):
            return None
        if any(p.role is Role.ADMIN for p in self._static.values()):
            return None
        token, _ = self.create_api_token(role=Role.ADMIN, name="bootstrap-admin")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        log.warning("auth is on and there was no admin token: wrote one to %s", path)
        return token

    # -- API tokens ----------------------------------------------------------------

    def create_api_token(self, *, role: Role, name: str,
                         ttl: float | None = None) -> tuple[str, dict[str, Any]]:
        token, tid, digest = sec.new_token(8, 32)
        now = self.clock()
        rec = {"id": tid, "hash": digest, "role": role.label, "name": name, "created": now,
               "expires": now + ttl if ttl else None}
        self.api_tokens[tid] = rec
        self.store.put("tokens", f"api/{tid}", rec)
        return token, rec

    def revoke_api_token(self, tid: str) -> dict[str, Any]:
        rec = self.api_tokens.pop(tid, None)
        if rec is None:
            raise NotFound("API token", tid)
        self.store.delete("tokens", f"api/{tid}")
        return rec

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization: Bearer ...` header (auth off: anonymous)."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise Unauthenticated("missing bearer token (Authorization: Bearer TOKEN)")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("expected 'Authorization: Bearer TOKEN'")
        static = self._static.get(sec.sha256(token))
        if static is not None:
            return static
        parts = sec.split_token(token)
        rec = self.api_tokens.get(parts[0]) if parts else None
        if parts is None or rec is None or not sec.same(sec.sha256(parts[1]), rec["hash"]):
            raise Unauthenticated("unknown or revoked API token")
        if _expired(rec, self.clock()):
            raise Unauthenticated("API token expired")
        return Principal(name=rec["name"], role=Role.parse(rec["role"]), token_id=rec["id"])

    @staticmethod
    def require(principal: Principal, role: Role, action: str) -> None:
        if principal.role < role:
            raise Forbidden(f"{principal.name} has role {principal.role.label}; {action} "
                            f"needs {role.label}")

    # -- join tokens ---------------------------------------------------------------

    def create_join_token(self, *, ttl: float, labels: dict[str, str] | None = None,
                          description: str = "", uses: int = 1,
                          name: str | None = None) -> tuple[str, dict[str, Any]]:
        """A new join token `id.secret` (the API appends the CA pin) and its record.
        It joins at most `uses` nodes, and only a node called `name` if given."""
        if uses < 1:
            raise ValueError("uses must be >= 1")
        token, tid, digest = sec.new_token(6, 24)
        now = self.clock()
        rec = {"id": tid, "hash": digest, "created": now, "expires": now + ttl,
               "labels": dict(labels or {}), "description": description, "uses": 0,
               "maxUses": int(uses), "name": name}
        self.join_tokens[tid] = rec
        self.store.put("tokens", f"join/{tid}", rec)
        return token, rec

    def revoke_join_token(self, tid: str) -> dict[str, Any]:
        rec = self.join_tokens.pop(tid, None)
        if rec is None:
            raise NotFound("join token", tid)
        self.store.delete("tokens", f"join/{tid}")
        return rec

    def check_join_token(self, token: str, *, name: str | None = None,
                         pin: str | None = None) -> dict[str, Any]:
        """The token's record if it may join a node called `name` now; else
        UnknownJoinToken, CaPinMismatch (the token's third part is not `pin`, the
        hex SHA-256 of this fleet CA), JoinTokenExpired, JoinTokenUsedUp or
        JoinTokenBound. A token without the pin part is accepted."""
        parts = sec.split_join_token(token)
        rec = self.join_tokens.get(parts[0]) if parts else None
        if parts is None or rec is None or not sec.same(sec.sha256(parts[1]), rec["hash"]):
            raise UnknownJoinToken("unknown or revoked join token", field="token")
        if parts[2] is not None and pin is not None and not sec.same(parts[2], pin):
            raise CaPinMismatch("join token pins another fleet CA than this cloudcore's "
                                "(GET /api/v1/ca shows its hash)", field="token")
        if _expired(rec, self.clock()):
            raise JoinTokenExpired("join token expired", field="token")
        if int(rec.get("uses", 0)) >= max_uses(rec):
            raise JoinTokenUsedUp("join token used up", field="token")
        bound = rec.get("name")
        if bound and name is not None and name != bound:
            raise JoinTokenBound(f"join token is bound to node name {bound!r}",
                                 field="name")
        return rec

    def used_join_token(self, tid: str) -> None:
        rec = self.join_tokens.get(tid)
        if rec is not None:
            rec["uses"] = int(rec.get("uses", 0)) + 1
            rec["lastUsed"] = self.clock()
            self.store.put("tokens", f"join/{tid}", rec)

    # -- node credentials ------------------------------------------------------------

    def check_can_join(self, node: str) -> None:
        if node in self.credentials:
            raise JoinRefused(f"node {node!r} has already joined; delete it first "
                              f"(fedctl node delete {node}) to join it again", field="name")

    def issue_credentials(self, node: str) -> NodeCredentials:
        """New broker credentials and node key of a node. The username is the node name
        so a broker ACL pattern (`%u`) confines it to its own topics."""
        password = sec.new_password()
        key = seal.new_node_key()
        rec = {"username": node, "hash": sec.mosquitto_hash(password),
               "created": self.clock(), "key": base64.b64encode(key).decode()}
        self.credentials[node] = rec
        self._keys[node] = key
        self._renewed.pop(node, None)
        self.store.put("credentials", node, rec)
        self._credentials_changed()
        return NodeCredentials(username=node, password=password, key=key)

    def token_record(self, kind: str, tid: str) -> dict[str, Any] | None:
        """An API ("api") or join ("join") token's stored record (a copy), or None."""
        table = self.api_tokens if kind == "api" else self.join_tokens
        rec = table.get(tid)
        return dict(rec) if rec is not None else None

    def adopt_token(self, kind: str, tid: str, rec: dict[str, Any] | None) -> None:
        """Take (or, with None, drop) an API or join token record another cloudcore
        shard made or changed (proposal 0008: tokens shared through KV)."""
        table = self.api_tokens if kind == "api" else self.join_tokens
        if rec is None:
            if table.pop(tid, None) is not None:
                self.store.delete("tokens", f"{kind}/{tid}")
            return
        table[tid] = dict(rec)
        self.store.put("tokens", f"{kind}/{tid}", dict(rec))

    def credentials_of(self, node: str) -> dict[str, Any] | None:
        """The stored credentials record of a node (hash, key...; a copy), or None."""
        rec = self.credentials.get(node)
        return dict(rec) if rec is not None else None

    def adopt_credentials(self, node: str, rec: dict[str, Any]) -> bool:
        """Take a node's credentials record issued by another cloudcore shard (proposal
        0008: registrations shared through KV); False (nothing changed) if this one
        already holds credentials for the node or the record has no usable key."""
        key = _decode_key(rec.get("key"))
        if node in self.credentials or key is None or not rec.get("hash"):
            return False
        self.credentials[node] = dict(rec)
        self._keys[node] = key
        self.store.put("credentials", node, dict(rec))
        self._credentials_changed()
        return True

    def node_key(self, node: str) -> bytes | None:
        """The node's 32-byte key, or None (not joined, or deleted: refuse its messages)."""
        return self._keys.get(node)

    def node_keys(self) -> dict[str, bytes]:
        """Every joined node's key (a copy)."""
        return dict(self._keys)

    def record_client_cert(self, node: str, *, serial: int, not_after: int) -> None:
        """Remember a client certificate issued to the node (all unexpired ones are
        revoked with the node)."""
        rec = self.credentials.get(node)
        if rec is None:
            raise NotFound("node credentials", node)
        now = self.clock()
        certs = [c for c in rec.get("certs", []) if float(c["notAfter"]) > now]
        rec["certs"] = [*certs, {"serial": str(serial), "notAfter": not_after}]
        self.store.put("credentials", node, rec)

    def revoked_serials(self) -> list[tuple[int, float]]:
        """(serial, notAfter) of every revoked certificate not yet expired (the CRL);
        expired ones are forgotten here."""
        now = self.clock()
        for serial in [s for s, r in self.revoked.items() if float(r["notAfter"]) <= now]:
            del self.revoked[serial]
            self.store.delete("tokens", f"crl/{serial}")
        return sorted((int(s), float(r["notAfter"])) for s, r in self.revoked.items())

    def verify_renewal(self, node: str, *, ts: int, mac: str) -> None:
        """Check a certificate renewal call: `mac` = hex HMAC(k_up, "renew|node|ts")
        with the node's key, `ts` within RENEW_SKEW of now and newer than the last
        accepted one (no replay). Raises Unauthenticated otherwise."""
        key = self._keys.get(node)
        if key is None:
            raise Unauthenticated(f"node {node!r} has no credentials (not joined, or "
                                  "deleted)")
        expect = seal.renew_mac(seal.NodeKeys.derive(key).up, node, ts)
        if not hmac.compare_digest(expect.encode(), mac.strip().lower().encode()):
            raise Unauthenticated("renewal mac does not verify with the node's key",
                                  field="mac")
        if abs(self.clock() - ts) > RENEW_SKEW:
            raise Unauthenticated(f"ts is more than {RENEW_SKEW:g} s away from the "
                                  "server's clock", field="ts")
        if ts <= self._renewed.get(node, 0):
            raise Unauthenticated("ts is not newer than the last renewal (replay?)",
                                  field="ts")
        self._renewed[node] = ts

    def verify_credentials(self, username: str, password: str) -> bool:
        rec = self.credentials.get(username)
        return rec is not None and sec.mosquitto_verify(password, rec["hash"])

    def forget_node(self, node: str) -> bool:
        self._keys.pop(node, None)
        self._renewed.pop(node, None)
        rec = self.credentials.pop(node, None)
        if rec is None:
            return False
        self.store.delete("credentials", node)
        now = self.clock()
        for cert in rec.get("certs", []):
            if float(cert["notAfter"]) > now:
                crl = {"serial": cert["serial"], "notAfter": cert["notAfter"], "node": node}
                self.revoked[cert["serial"]] = crl
                self.store.put("tokens", f"crl/{cert['serial']}", crl)
        if rec.get("certs") and self.on_revoked is not None:
            self.on_revoked(node)
        self._credentials_changed()
        return True

    def mosquitto_passwd(self, extra: dict[str, str] | None = None) -> str:
        """A mosquitto password_file of every node credential (plus `extra` hashes)."""
        lines = [f"{u}:{h}" for u, h in sorted((extra or {}).items())]
        lines += [f"{r['username']}:{r['hash']}" for _, r in sorted(self.credentials.items())]
        return "".join(line + "\n" for line in lines)

    def _credentials_changed(self) -> None:
        if self.on_credentials is not None:
            self.on_credentials()


def max_uses(rec: dict[str, Any]) -> int:
    """How many nodes a join token may join (1 for records from before use limits)."""
    return int(rec.get("maxUses") or 1)


def _decode_key(text: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return key if len(key) == seal.KEY_BYTES else None


def _expired(rec: dict[str, Any], now: float) -> bool:
    exp = rec.get("expires")
    return exp is not None and float(exp) <= now


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """A token record without its hash, as the API lists it."""
    return {k: v for k, v in rec.items() if k != "hash"}
