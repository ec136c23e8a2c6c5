"""The broker's password file and ACL, kept by cloudcore (`--mosquitto-passwd`,
`--mosquitto-acl`; proposal 0002, "Identities and names").

The password file holds cloudcore's service identities (`<user>_sub`,
`<user>_pub<i>`, one password) and every joined node (username = node name), as
mosquitto `$7$` hashes. The ACL gives the service users `fed/v1/#` and each node, by
pattern, only its own `down` (read) and `up`/`will` (write). A watcher outside
cloudcore (the systemd path unit of docs/operations.md, testbed's broker) sends the
broker SIGHUP when the file changes; mosquitto 2.0 then re-reads it and disconnects
clients whose credentials are gone, which is how deleting a node closes its session.

With node certificates (`--node-certs`) the password file does not apply to nodes
(the broker takes their identity from the certificate), so a deleted node's
certificates go into a CRL, `crl.pem` in `--broker-cert-dir` (mosquitto `crlfile`),
written before the password file: the reload that file change triggers loads it, and
the broker refuses those certificates from then on. mosquitto keeps a session that is
already open across a reload in that mode, so the sync hub also takes the node's
client id over once (`synchub.mqtt.SessionCloser`), which closes it.

Writes are debounced: a change marks the files dirty and `run()` rewrites them at most
once per `min_interval` (0.5 s) and always after the last change, so 5,000 quick joins
rewrite the file a handful of times, not 5,000. A join may therefore answer before
the broker knows the node's password; the agent retries its connection with backoff,
so it gets in within a second or so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from shared import topics

log = logging.getLogger("cloudcore.auth.broker")

MIN_INTERVAL = 0.5
"""Seconds between two rewrites of the broker files (at most ~2 per second)."""


def service_identities(user: str, publishers: int) -> list[str]:
    """cloudcore's broker identities: `<user>_sub` and `<user>_pub<i>` (also the MQTT
    client ids, the broker running with use_username_as_clientid)."""
    return [f"{user}_sub"] + [f"{user}_pub{i}" for i in range(publishers)]


def mosquitto_acl(service_users: list[str]) -> str:
    """The ACL of proposal 0002: service users read and write everything of the
    protocol; a node reads only its own `down` and writes only its own `up`/`will`."""
    rules = topics.acl_rules()
    lines = []
    for user in service_users:
        lines += [f"user {user}"] + [f"topic readwrite {f}" for a, f in rules
                                     if a == "service"] + [""]
    lines += [f"pattern {a} {f}" for a, f in rules if a != "service"]
    return "\n".join(lines) + "\n"


class BrokerFiles:
    """Writes the password file and ACL from `passwd_text()`, debounced (see module)."""

    def __init__(self, *, passwd: Path | None, acl: Path | None,
                 passwd_text: Callable[[], str], acl_text: str | Callable[[], str],
                 crl: Path | None = None, crl_pem: Callable[[], bytes] | None = None,
                 min_interval: float = MIN_INTERVAL) -> None:
        self.passwd = passwd
        self.acl = acl
        self.crl = crl if crl_pem is not None else None
        self._passwd_text = passwd_text
        self._acl_text = acl_text
        self._crl_pem = crl_pem
        self.min_interval = min_interval
        self.writes = 0
        """Rewrites of the password file so far (for tests and metrics)."""
        self._dirty = asyncio.Event()
        self._acl_written: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether there is anything to rewrite after a change."""
        return self.passwd is not None or self.crl is not None

    def changed(self) -> None:
        """Credentials changed: rewrite soon (callable from the event loop thread)."""
        if self.enabled:
            self._dirty.set()

    def write_now(self) -> None:
        """Write both files at once (at start, before cloudcore logs in)."""
        self._dirty.clear()
        if self.acl is not None:
            self._acl_written = self._acl()
            _replace(self.acl, self._acl_written)
        self._write_passwd()

    def _acl(self) -> str:
        return self._acl_text if isinstance(self._acl_text, str) else self._acl_text()

    async def run(self) -> None:
        """Rewrite the password file after changes until cancelled; a change pending at
        cancellation is written before returning."""
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                self._write_passwd()
                await asyncio.sleep(self.min_interval)
        finally:
            if self._dirty.is_set():
                self._dirty.clear()
                self._write_passwd()

    def _write_passwd(self) -> None:
        """The CRL first, then the password file (whose change makes the broker reload,
        picking up both)."""
        if self.crl is not None and self._crl_pem is not None:
            try:
                _replace(self.crl, self._crl_pem().decode(), mode=0o644)
            except OSError as exc:
                log.error("cannot write the broker's CRL %s: %s", self.crl, exc)
        if self.passwd is None:
            return
        if self.acl is not None and not isinstance(self._acl_text, str):
            text = self._acl()  # it changes (shards' identities): before the reload
            if text != self._acl_written:
                try:
                    _replace(self.acl, text)
                    self._acl_written = text
                except OSError as exc:
                    log.error("cannot write mosquitto ACL %s: %s", self.acl, exc)
        try:
            _replace(self.passwd, self._passwd_text())
            self.writes += 1
        except OSError as exc:  # the next change tries again; the old file stays
            log.error("cannot write mosquitto password file %s: %s", self.passwd, exc)


def _replace(path: Path, text: str, *, mode: int = 0o640) -> None:
    """Write `path` atomically, mode 0640, keeping an existing file's group (the broker
    reads it through that group)."""
    try:
        gid: int | None = path.stat().st_gid
    except FileNotFoundError:
        gid = None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        if gid is not None and gid != tmp.stat().st_gid:
            os.chown(tmp, -1, gid)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
