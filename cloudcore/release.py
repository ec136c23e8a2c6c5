"""The cloud's agent releases (proposal 0006): the release key, and publishing.

cloudcore signs agent releases with its own ed25519 key, `STATE_DIR/pki/release.key`
(PEM, mode 0600), made beside the fleet CA at first start (`open_release_key`). Its
public half goes to every node in the join answer (`releaseKeys`); an agent accepts a
release only if one of the keys it trusts verifies its signature.

`python -m cloudcore release publish --version V --image REF [--source DIR]` makes a
release and pushes it:

1. the bundle of DIR's `edgecore/` and `shared/` (default: the directory this
   cloudcore's own `shared` package lives in, so the agent of the same checkout or
   installation), built and signed by `shared.release.make_release`;
2. an OCI image whose only layer holds `/release/bundle.tar.gz` and
   `/release/release.json` (`umoci new`, then the layer written here and added with
   `umoci raw add-layer`);
3. `skopeo copy` of that image to `docker://REF`, with registry credentials from
   `--registry-user` and `--registry-password-file` (given to skopeo in a temporary
   auth file, never on its command line), a CA (`--registry-ca`) or
   `--insecure-registry` (plain HTTP, or TLS without verification).

Only this module drives umoci and skopeo on the cloud's side.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudcore.errors import PublishError
from shared import release as rel
from shared.errors import ReleaseError

RELEASE_KEY = "release.key"
"""The release key's file name in the PKI directory (beside ca.crt and ca.key)."""
TIMEOUT = 600.0
"""Seconds each umoci or skopeo call may take."""


def release_key_path(pki_dir: Path) -> Path:
    return Path(pki_dir) / RELEASE_KEY


def open_release_key(pki_dir: Path) -> str:
    """Load the release key from `pki_dir` (made, 0600, if absent); returns its public
    key as base64 of the raw 32 bytes (what a join answer's `releaseKeys` carries)."""
    path = release_key_path(pki_dir)
    try:
        key = rel.load_or_generate_key(path)
    except FileExistsError:  # another process made it between the check and the open
        key = rel.load_key(path)
    except OSError as exc:
        raise PublishError(f"release key {path}: {exc.strerror or exc}") from exc
    except ReleaseError as exc:
        raise PublishError(f"release key {path}: {exc}; restore it from a backup, or move "
                           "it away to make a new one (then every node must trust the new "
                           "key: re-join, or edgecore run --release-key)") from exc
    return rel.public_key_b64(key)


@dataclass(frozen=True)
class Registry:
    """How to reach the registry a release is pushed to."""

    user: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    insecure: bool = False
    """Plain HTTP, or TLS without verifying the registry's certificate."""


@dataclass(frozen=True)
class Published:
    version: str
    image: str
    sha256: str
    key_id: str
    bundle_bytes: int


def publish(*, version: str, image: str, pki_dir: Path, source: Path | None = None,
            registry: Registry | None = None, umoci: str = "umoci",
            skopeo: str = "skopeo") -> Published:
    """Build, sign and push the release `version` as `image`; PublishError says which
    step failed and why."""
    registry = registry or Registry()
    image = image.removeprefix("docker://")
    if not image or "/" not in image or any(c.isspace() for c in image):
        raise PublishError(f"--image {image!r}: give a registry reference such as "
                           "REGISTRY:5000/edgefed/agent:0.9.1")
    src = Path(source) if source is not None else default_source()
    key_path = release_key_path(pki_dir)
    if not key_path.exists():
        raise PublishError(f"no release key at {key_path}: start cloudcore once with this "
                           "--state-dir (it makes the key and gives it to nodes at join), "
                           "or pass the right --state-dir")
    try:
        key = rel.load_key(key_path)
    except OSError as exc:
        raise PublishError(f"release key {key_path}: {exc.strerror or exc}") from exc
    except ReleaseError as exc:
        raise PublishError(f"release key {key_path}: {exc}") from exc
    for tool in (umoci, skopeo):
        if shutil.which(tool) is None:
            raise PublishError(f"{tool} is not installed (apt-get install {tool})")
    with tempfile.TemporaryDirectory(prefix="edgefed-release-") as tmp:
        work = Path(tmp)
        content = work / "content" / rel.RELEASE_DIR
        try:
            made = rel.make_release(src, version=version, key=key, out_dir=content)
        except ReleaseError as exc:
            raise PublishError(f"cannot build the release: {exc}") from exc
        except OSError as exc:
            raise PublishError(f"cannot build the release from {src}: {exc}") from exc
        layout = work / "layout"
        tag = "release"
        ref = f"{layout}:{tag}"
        _run([umoci, "init", "--layout", str(layout)], "umoci init")
        _run([umoci, "new", "--image", ref], "umoci new")
        layer = work / "layer.tar"
        _layer_tar(content, layer)
        _run([umoci, "raw", "add-layer", "--image", ref, str(layer)], "umoci raw add-layer")
        _run([umoci, "config", "--image", ref,
              "--config.label", f"io.edgefed.release.version={version}",
              "--config.label", f"io.edgefed.release.sha256={made.sha256}"], "umoci config")
        _run([umoci, "gc", "--layout", str(layout)], "umoci gc")
        argv = [skopeo, "--insecure-policy", "copy", "--quiet"]
        if registry.insecure:
            argv.append("--dest-tls-verify=false")
        if registry.ca_file is not None:
            certs = work / "certs"
            certs.mkdir()
            shutil.copyfile(registry.ca_file, certs / "ca.crt")
            argv += ["--dest-cert-dir", str(certs)]
        if registry.user is not None:
            authfile = work / "auth.json"
            _write_authfile(authfile, image, registry.user, registry.password or "")
            argv += ["--dest-authfile", str(authfile)]
        argv += [f"oci:{ref}", f"docker://{image}"]
        _run(argv, f"push to {image}")
        size = (content / rel.BUNDLE).stat().st_size
    pub = base64.b64decode(rel.public_key_b64(key))
    return Published(version=version, image=image, sha256=made.sha256,
                     key_id=rel.key_id(pub), bundle_bytes=size)


def _layer_tar(content: Path, out: Path) -> None:
    """The image's one layer: `release/` and its files, owned by root, mtime 0 (umoci
    writes the tar stream as given; its own `insert` left out tar's end blocks)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(rel.RELEASE_DIR)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for name in (rel.MANIFEST, rel.BUNDLE):
            data = (content / name).read_bytes()
            info = tarfile.TarInfo(f"{rel.RELEASE_DIR}/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


def default_source() -> Path:
    """The directory holding this installation's `shared` package (and, in a checkout
    or a full installation, `edgecore` beside it)."""
    import shared

    return Path(shared.__file__).resolve().parent.parent


def _write_authfile(path: Path, image: str, user: str, password: str) -> None:
    host = image.split("/", 1)[0]
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": {host: {"auth": token}}}, f)


def _run(argv: list[str], what: str) -> None:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=False,
                             timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise PublishError(f"{what}: no answer in {TIMEOUT:g} s") from exc
    except OSError as exc:
        raise PublishError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from exc
    if res.returncode != 0:
        raise PublishError(f"{what} failed (exit {res.returncode}): {_cause(res.stderr)}")


def _cause(stderr: str) -> str:
    """The tool's own words first: skopeo's `msg="..."` or the last line."""
    text = stderr.strip()
    if 'msg="' in text:
        msg = text.rsplit('msg="', 1)[1]
        return msg.split('"', 1)[0].replace('\\"', '"')
    return text.splitlines()[-1] if text else "no message"


def main(argv: Sequence[str]) -> int:
    """`cloudcore release publish ...`; exit 0 when pushed, 1 on failure, 2 on usage."""
    from cloudcore.config import Settings

    state_default = os.environ.get("CLOUDCORE_STATE_DIR", str(Settings().store.state_dir))
    p = argparse.ArgumentParser(prog="cloudcore release",
                                description="agent releases signed by this cloudcore")
    sub = p.add_subparsers(dest="what", required=True)
    pub = sub.add_parser(
        "publish", help="build the agent bundle, sign it with STATE_DIR/pki/release.key "
                        "and push it as an OCI image",
        description="Build a release of the agent (edgecore/ and shared/ of --source), "
                    "sign it with this cloudcore's release key and push it to a registry "
                    "as an OCI image with one layer (/release/bundle.tar.gz, "
                    "/release/release.json). Then: fedctl upgrade nodes --version V "
                    "--image REF.")
    pub.add_argument("--version", required=True, help="the release's version, e.g. 0.9.1 "
                     "(letters, digits, '.+_-', at most 64)")
    pub.add_argument("--image", required=True, metavar="REF",
                     help="where to push it, e.g. REGISTRY:5000/edgefed/agent:0.9.1")
    pub.add_argument("--source", metavar="DIR", default=None,
                     help="directory holding edgecore/ and shared/ (default: this "
                          f"installation's, {default_source()})")
    pub.add_argument("--state-dir", default=state_default,
                     help="cloudcore's state directory (its pki/release.key signs)")
    pub.add_argument("--registry-user", metavar="USER", default=None)
    pub.add_argument("--registry-password-file", metavar="FILE", default=None,
                     help="file holding the registry password (first line)")
    pub.add_argument("--registry-ca", metavar="FILE", default=None,
                     help="CA certificate to verify the registry's TLS certificate with")
    pub.add_argument("--insecure-registry", action="store_true",
                     help="plain HTTP, or TLS without verifying the certificate")
    a = p.parse_args(argv)
    password = None
    if a.registry_password_file:
        try:
            lines = Path(a.registry_password_file).read_text().splitlines()
        except OSError as exc:
            print(f"cloudcore release publish: --registry-password-file: cannot read "
                  f"{a.registry_password_file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        password = lines[0].strip() if lines else ""
        if a.registry_user is None:
            print("cloudcore release publish: --registry-password-file needs "
                  "--registry-user", file=sys.stderr)
            return 2
    try:
        rel.check_version(a.version)
    except ReleaseError as exc:
        print(f"cloudcore release publish: --version: {exc}", file=sys.stderr)
        return 2
    try:
        out = publish(version=a.version, image=a.image,
                      pki_dir=Path(a.state_dir) / "pki",
                      source=Path(a.source) if a.source else None,
                      registry=Registry(user=a.registry_user, password=password,
                                        ca_file=Path(a.registry_ca) if a.registry_ca else None,
                                        insecure=a.insecure_registry))
    except PublishError as exc:
        print(f"cloudcore release publish: {exc}", file=sys.stderr)
        return 1
    print(f"published agent release {out.version} as {out.image} (bundle "
          f"{out.bundle_bytes} bytes, sha256:{out.sha256}, signed by release key "
          f"{out.key_id})")
    print(f"next: fedctl upgrade nodes --version {out.version} --image {out.image}")
    return 0
