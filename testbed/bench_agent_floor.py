"""What the agent's libraries cost before any agent code runs (issue 16, RSS target):
`python -m testbed.bench_agent_floor [--runs 3] [--python PY]`.

Starts a fresh interpreter the way `edgecore run` restarts itself (`-OO -X
no_debug_ranges`, bytecode compiled once beforehand into a cache, as an installed
package has it), applies the agent's own start-up (`prepare_imports`, glibc malloc tuning, the
agent's deferred imports), then
imports, step by step, what the agent cannot run without, and prints the process's
VmRSS after each step. Before each reading it does what the agent's memory trimmer
does (`gc.collect()` and `malloc_trim(0)`), so import-time garbage is not counted:

1. the interpreter with the agent's start-up (`edgecore.__main__`, argparse, logging,
   and msgspec, the pod spec's types, which the start-up imports to defer its
   `msgspec.inspect`);
2. asyncio and ssl;
3. a TLS client context as the agent's link builds it (a CA file, a client
   certificate and key; generated for the run);
4. paho-mqtt and aiomqtt (the MQTT client DESIGN.md names);
5. msgpack and lmdb (the wire format and the cache DESIGN.md names);
6. `edgecore.agent` with everything it imports (the agent's own code, no pods, no
   connection);
7. the client certificate's lifetime read, as the agent does at start when it logs
   in with one (mutual TLS);
8. a sealed Secret value opened, as the agent does for a pod that uses a Secret.

Steps 7 and 8 must add nothing (they once loaded `cryptography`, 8.6-11.8 MiB). A last
step, for reference, imports `urllib.request` as the certificate renewal did in the
agent's process before it moved to a child (`edgecore.renew`): what that kept.

Steps 1-5 are what an agent built on the named libraries with TLS holds; compare
with the issue's target (28 MiB with 20 pods) and with `testbed.bench_edge
--footprint` (the whole agent). A program that prints figures, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET_MIB = 28.0
ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import gc, json, re, sys
from edgecore.__main__ import (AGENT_DEFERRED_IMPORTS, _libc, _tune_malloc, defer_unused_imports,
                               prepare_imports)
prepare_imports()
_tune_malloc()
if hasattr(sys.modules["edgecore"], "__path__"):
    try:
        from edgecore.lean import lighten_library_imports
    except ImportError:  # a tree from before issue 16's eighth round
        pass
    else:
        lighten_library_imports(lambda: defer_unused_imports(AGENT_DEFERRED_IMPORTS))
defer_unused_imports(AGENT_DEFERRED_IMPORTS)
libc = _libc()
out = []
def step(name):
    gc.collect()
    if libc is not None:
        libc.malloc_trim(0)
    with open("/proc/self/status") as f:
        kib = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    out.append([name, kib / 1024])
step("interpreter + the agent's start-up")
import asyncio, ssl
step("+ asyncio, ssl")
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="broker.example")
step("+ TLS client context (CA, client cert), a server name")
import paho.mqtt.client, aiomqtt
step("+ paho-mqtt, aiomqtt")
import msgpack, lmdb
step("+ msgpack, lmdb")
import edgecore.agent
step("+ edgecore.agent (the agent's code)")
from pathlib import Path
from edgecore.join import certificate_lifetime
certificate_lifetime(Path(sys.argv[2]))
step("+ the client certificate's lifetime read")
import msgpack
from shared import seal
keys = seal.NodeKeys.derive(bytes(range(32)))
seal.open_secret(keys.secret, node="floor-node", entry_key="secret/default/s",
                 sealed=msgpack.unpackb(bytes.fromhex(sys.argv[4]), raw=False))
step("+ a sealed Secret value opened")
import urllib.request
urllib.request.Request("https://cloud.invalid/", data=b"{}")
step("(reference) + urllib.request, as a renewal made in-process")
print(json.dumps(out))
"""


def make_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a client certificate signed by it (EC P-256), as `edgecore join` leaves."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
             signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - day).not_valid_after(now + day)
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(signer, hashes.SHA256()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    node_key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    paths = folder / "ca.pem", folder / "node.pem", folder / "node.key"
    paths[0].write_bytes(cert("floor-ca", ca_key, "floor-ca", ca_key, True).public_bytes(pem))
    paths[1].write_bytes(cert("floor-node", node_key, "floor-ca", ca_key, False).public_bytes(pem))
    paths[2].write_bytes(node_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return paths


def sealed_secret() -> str:
    """A Secret value sealed for the child's node key and entry, as msgpack hex."""
    import msgpack

    from shared import seal

    keys = seal.NodeKeys.derive(bytes(range(32)))
    sealed = seal.seal_secret(keys.secret, node="floor-node", entry_key="secret/default/s",
                              value={"password": "floor"})
    return msgpack.packb(sealed, use_bin_type=True).hex()


def run_once(python: str, pki: tuple[Path, Path, Path], env: dict[str, str]) -> list[list]:
    cmd = [python, "-OO", "-X", "no_debug_ranges", "-c", CHILD, *map(str, pki), sealed_secret()]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"bench_agent_floor: the measuring interpreter failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--python", default=sys.executable,
                    help="the measuring interpreter (e.g. a venv of Debian's python3.11 with "
                         "`pip install '.[edge]'`); the agent's code comes from this checkout")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-floor-") as tmp:
        folder = Path(tmp)
        pki = make_pki(folder)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONSAFEPATH": "1",
               "PYTHONPYCACHEPREFIX": str(folder / "pycache")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        run_once(args.python, pki, env)  # compiles the bytecode into the cache
        runs = [run_once(args.python, pki, env) for _ in range(args.runs)]
    print(f"python {args.python} -OO -X no_debug_ranges, {args.runs} runs; VmRSS after "
          f"gc.collect() + malloc_trim(0); load average {os.getloadavg()[0]:.2f}")
    result = []
    for i, (name, _) in enumerate(runs[0]):
        mib = [r[i][1] for r in runs]
        result.append({"step": name, "rss_mib": mib})
        print(f"  {name:45s} median {statistics.median(mib):5.1f} MiB "
              f"(runs {' '.join(f'{x:.1f}' for x in mib)})")
    named = statistics.median(r[4][1] for r in runs)
    print(f"the named libraries with TLS (steps 1-5) hold {named:.1f} MiB: "
          f"{TARGET_MIB - named:+.1f} MiB left under the {TARGET_MIB:.0f} MiB target for "
          f"the agent's code, its connection and 20 pods")
    print(json.dumps({"python": args.python, "steps": result}))


if __name__ == "__main__":
    main()
