"""Token formats and hashing (the only place that knows how a secret is stored).

Tokens are `id.secret`: the id is public (it names the token in `fedctl token list`
and is the store key), the secret is random and kept only as SHA-256 (enough for a
random secret of 120+ bits; a slow hash protects guessable passwords, not these).
Node broker passwords are stored in mosquitto's own `$7$` PBKDF2-SHA512 format so a
mosquitto `password_file` can be written from the store without the clear text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits
_MOSQ_ITERATIONS = 101  # what mosquitto_passwd 2.0 uses


def random_id(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_token(id_len: int, secret_len: int) -> tuple[str, str, str]:
    """(token, id, sha256 of the secret)."""
    tid, secret = random_id(id_len), random_id(secret_len)
    return f"{tid}.{secret}", tid, sha256(secret)


def split_token(token: str) -> tuple[str, str] | None:
    tid, sep, secret = token.strip().partition(".")
    if not sep or not tid or not secret or len(token) > 512:
        return None
    return tid, secret


def split_join_token(token: str) -> tuple[str, str, str | None] | None:
    """A join token's (id, secret, CA pin or None): `id.secret` or `id.secret.pin`,
    the pin being the hex SHA-256 of the fleet CA's DER (proposal 0002)."""
    parts = token.strip().split(".")
    if len(token) > 512 or len(parts) not in (2, 3) or not all(parts):
        return None
    return parts[0], parts[1], parts[2].lower() if len(parts) == 3 else None


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_password() -> str:
    return secrets.token_urlsafe(24)


def mosquitto_hash(password: str, *, salt: bytes | None = None) -> str:
    """`$7$101$salt$hash`, the format of mosquitto_passwd (PBKDF2-HMAC-SHA512)."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _MOSQ_ITERATIONS)
    return (f"$7${_MOSQ_ITERATIONS}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def mosquitto_verify(password: str, stored: str) -> bool:
    try:
        _, kind, iterations, salt, digest = stored.split("$")
        if kind != "7":
            return False
        raw = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt),
                                  int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(base64.b64encode(raw).decode(), digest)
