"""Identity and access: join tokens, per-node credentials and API tokens with roles.

DESIGN.md section 7: a node joins with a short-lived join token and receives its own
broker credentials (like `keadm gettoken` / `keadm join`); people and scripts use
bearer tokens with a role (admin, operator, read-only). Secrets are stored only as
hashes; the clear text is shown once, when it is created.

`Auth` is synchronous and in memory like the fleet, persisting through the same small
`put`/`delete` interface (the store), so it is unit-testable with a fake.
"""

from cloudcore.auth.errors import (
    AuthError,
    Forbidden,
    JoinRefused,
    JoinTokenExpired,
    Unauthenticated,
    UnknownJoinToken,
)
from cloudcore.auth.registry import Auth, Principal, Role

__all__ = ["Auth", "AuthError", "Forbidden", "JoinRefused", "JoinTokenExpired", "Principal",
           "Role", "Unauthenticated", "UnknownJoinToken"]
