"""Errors of cloudcore.auth, each with the HTTP status the API answers with.

    CloudcoreError                   (cloudcore.errors)
    └── AuthError                    status + message (+ field)
        ├── Unauthenticated  401     no bearer token, or one that is unknown
        ├── Forbidden        403     a valid token whose role is too low
        ├── UnknownJoinToken 401     join token never issued, or revoked
        ├── JoinTokenExpired 401     join token past its expiry
        ├── JoinTokenUsedUp  401     join token joined as many nodes as it may
        ├── CaPinMismatch    401     the token pins another fleet CA than this one
        ├── JoinTokenBound   403     the token is bound to another node name
        ├── JoinRefused      409     the node name is taken by a node with credentials
        └── TooManyJoins     429     this address joins too often (`retry_after` s)
"""

from __future__ import annotations

from cloudcore.errors import CloudcoreError


class AuthError(CloudcoreError):
    status = 401
    reason = "Unauthorized"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Unauthenticated(AuthError):
    status = 401
    reason = "Unauthenticated"


class Forbidden(AuthError):
    status = 403
    reason = "Forbidden"


class UnknownJoinToken(AuthError):
    status = 401
    reason = "UnknownJoinToken"


class JoinTokenExpired(AuthError):
    status = 401
    reason = "JoinTokenExpired"


class JoinRefused(AuthError):
    status = 409
    reason = "NodeExists"


class JoinTokenUsedUp(AuthError):
    status = 401
    reason = "JoinTokenUsedUp"


class CaPinMismatch(AuthError):
    status = 401
    reason = "CaPinMismatch"


class JoinTokenBound(AuthError):
    status = 403
    reason = "JoinTokenBound"


class TooManyJoins(AuthError):
    status = 429
    reason = "TooManyRequests"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
