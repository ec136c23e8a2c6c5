"""Registry credentials for one pull, from a pod's `imagePullSecrets`.

A pull secret is a Secret of type `kubernetes.io/dockerconfigjson` (key
`.dockerconfigjson`: `{"auths": {"REGISTRY": {"auth": base64("user:pass")}}}`, or
`username` / `password` instead of `auth`) or the older `kubernetes.io/dockercfg` (key
`.dockercfg`: the `auths` map itself). `credentials_for` picks, as the kubelet does, the
entry whose registry matches the image: host[:port] with an optional path prefix (the
longest match wins), `*.example.com` wildcards, a scheme or the `/v1/` of Docker Hub's
old address ignored; `index.docker.io` and `registry-1.docker.io` are `docker.io`.

The credentials never reach a log or a status: `RegistryCredentials` does not print its
password, and the image store hands them to skopeo in a temporary 0600 authfile that is
removed after that one pull (`edgecore.runtime.images`). Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_HUB = {"index.docker.io", "registry-1.docker.io", "docker.io"}


@dataclass(frozen=True)
class RegistryCredentials:
    """A user name and password for one registry (the password is never printed)."""

    registry: str
    username: str
    password: str = field(repr=False)

    def authfile(self) -> bytes:
        """The containers-auth.json document skopeo's `--authfile` reads."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return json.dumps({"auths": {self.registry: {"auth": token}}}).encode()


def _split(image: str) -> tuple[str, str]:
    """`reg:5000/team/app:1` -> ("reg:5000", "team/app"); Docker Hub's images are
    ("docker.io", "library/busybox")."""
    name = image.split("@", 1)[0]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, path = first.lower(), rest
    else:
        host, path = "docker.io", name if sep else f"library/{name}"
    last = path.rsplit("/", 1)
    if ":" in last[-1]:
        path = path.rsplit(":", 1)[0]
    return ("docker.io" if host in _HUB else host), path


def _pattern(key: str) -> tuple[str, str]:
    """A config key (`https://reg:5000/v1/`, `reg:5000/team`) -> (host, path prefix)."""
    k = key.strip()
    for scheme in ("https://", "http://"):
        if k.lower().startswith(scheme):
            k = k[len(scheme):]
    host, _, path = k.partition("/")
    host = host.lower()
    path = path.strip("/")
    if host in _HUB:
        host = "docker.io"
        if path in ("v1", "v2"):
            path = ""
    return host, path


def _entries(data: Mapping[str, bytes]) -> dict[str, Any]:
    """The registry -> entry map of one pull secret's data ({} if it has none)."""
    raw, nested = ((data[".dockerconfigjson"], True) if ".dockerconfigjson" in data
                   else (data.get(".dockercfg"), False))
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    if nested:
        doc = doc.get("auths") if isinstance(doc, dict) else None
    return doc if isinstance(doc, dict) else {}


def _user_pass(entry: Any) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        return None
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str) and user:
        return user, password
    auth = entry.get("auth")
    if isinstance(auth, str):
        try:
            text = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, ValueError):
            return None
        user, sep, password = text.partition(":")
        if sep and user:
            return user, password
    return None


def _glob(host: str, pattern: str) -> bool:
    import fnmatch  # only for wildcard entries: not on the agent's import path

    return fnmatch.fnmatchcase(host, pattern)


def credentials_for(image: str,
                    secrets: Iterable[Mapping[str, bytes]]) -> RegistryCredentials | None:
    """The credentials the pull secrets (each a Secret's data) hold for `image`'s
    registry, the longest matching path first, the pod's secrets in order; None if none
    matches (the pull goes without, as in Kubernetes)."""
    host, path = _split(image)
    best: tuple[int, RegistryCredentials] | None = None
    for data in secrets:
        for key, entry in _entries(data).items():
            if not isinstance(key, str):
                continue
            khost, kpath = _pattern(key)
            if not (khost == host or ("*" in khost and _glob(host, khost))):
                continue
            if kpath and path != kpath and not path.startswith(kpath + "/"):
                continue
            found = _user_pass(entry)
            if found is None:
                continue
            score = len(kpath) + (0 if "*" in khost else 1)
            if best is None or score > best[0]:
                best = (score, RegistryCredentials(host, *found))
    return best[1] if best is not None else None
