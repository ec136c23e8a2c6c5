"""The client certificate's renewal, in a child process of the agent (issue 16).

The renewal is one HTTPS call every two thirds of a certificate's life (hours to days:
`edgecore.agent`'s `certrenew` task). Made in the agent's own process, it imported
`urllib.request` with `http.client` and the `email` package, and the agent held them
from then on: 1.1-1.9 MiB of RSS (Debian's Python 3.11) in every mutual-TLS agent after
its first renewal, for a call it makes a few times a week. `renew_in_child` runs
`python -m edgecore.renew` instead: the child reads the request as JSON on its standard
input (the node's upward key never appears in a command line or an environment), makes
the call with `edgecore.join.renew_certificate`, writes the new certificate and key
(0600, atomically), prints `{"not_after": ...}` or `{"error": "..."}` and exits.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path

from edgecore.join import JOIN_TIMEOUT_S, JoinError

CHILD_TIMEOUT_S = JOIN_TIMEOUT_S + 30.0
"""The whole child: its interpreter's start, the call's own timeout, the writes."""


async def renew_in_child(cloud: str, *, name: str, k_up: bytes, cert_file: Path,
                         key_file: Path, ca_file: Path | None, now: float) -> float | None:
    """`edgecore.join.renew_certificate` in a child process: the new expiry if the cloud
    said; JoinError with the child's message when it failed."""
    request = {"cloud": cloud, "name": name, "k_up": base64.b64encode(k_up).decode(),
               "cert_file": str(cert_file), "key_file": str(key_file),
               "ca_file": str(ca_file) if ca_file else None, "now": now}
    # the same modules as this process, wherever they came from (an upgrade slot)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecore.renew", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()),
                                          CHILD_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise JoinError(f"the renewal process did not finish in {CHILD_TIMEOUT_S:.0f} s") \
            from None
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise JoinError(f"the renewal process exited with {proc.returncode}: {tail[0]}")
    if "error" in answer:
        raise JoinError(str(answer["error"]))
    not_after = answer.get("not_after")
    return float(not_after) if isinstance(not_after, int | float) else None


def main() -> int:
    from edgecore.join import renew_certificate

    try:
        req = json.loads(sys.stdin.read())
        not_after = renew_certificate(
            str(req["cloud"]), name=str(req["name"]), k_up=base64.b64decode(req["k_up"]),
            cert_file=Path(req["cert_file"]), key_file=Path(req["key_file"]),
            ca_file=Path(req["ca_file"]) if req.get("ca_file") else None,
            now=float(req["now"]))
    except (JoinError, OSError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    except (ValueError, KeyError, TypeError) as exc:
        print(json.dumps({"error": f"a malformed renewal request: {exc!r}"}))
        return 2
    print(json.dumps({"not_after": not_after}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
