"""Identity and access: join tokens, per-node credentials and API tokens with roles.

DESIGN.md section 7 and proposal 0002: a node joins with a join token (use-limited,
optionally bound to a name, pinning the fleet CA) and receives its own broker
credentials and node key (like `keadm gettoken` / `keadm join`); people and scripts
use bearer tokens with a role (admin, operator, read-only). Token secrets and
passwords are stored only as hashes; the clear text is shown once, when it is
created. `pki` is the fleet CA, `broker` the broker files cloudcore keeps,
`ratelimit` the per-address join limit.

`Auth` is synchronous and in memory like the fleet, persisting through the same small
`put`/`delete` interface (the store), so it is unit-testable with a fake.
"""

from cloudcore.auth.errors import (
    AuthError,
    CaPinMismatch,
    Forbidden,
    JoinRefused,
    JoinTokenBound,
    JoinTokenExpired,
    JoinTokenUsedUp,
    TooManyJoins,
    Unauthenticated,
    UnknownJoinToken,
)
from cloudcore.auth.registry import Auth, NodeCredentials, Principal, Role

__all__ = ["Auth", "AuthError", "CaPinMismatch", "Forbidden", "JoinRefused", "JoinTokenBound",
           "JoinTokenExpired", "JoinTokenUsedUp", "NodeCredentials", "Principal", "Role",
           "TooManyJoins", "Unauthenticated", "UnknownJoinToken"]
