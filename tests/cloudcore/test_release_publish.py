"""`python -m cloudcore release publish` against the testbed's real registry
(docker-registry with htpasswd auth): the pushed image has one layer holding
/release/bundle.tar.gz and /release/release.json, signed by the cloud's release key."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudcore.__main__ import main as cloudcore_main
from cloudcore.errors import PublishError
from cloudcore.release import Registry, open_release_key, publish
from shared import release as rel
from testbed.registry import LocalRegistry

USER, PASSWORD = "ops", "s3cret"


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    with LocalRegistry(auth=(USER, PASSWORD)) as reg:
        yield reg


def pulled_layer(ref: str, tmp: Path) -> tuple[list[str], dict[str, bytes]]:
    """The image's layers (digests) and the files of its first layer, pulled back with
    skopeo."""
    out = tmp / "pulled"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                    "--src-creds", f"{USER}:{PASSWORD}", f"docker://{ref}", f"dir:{out}"],
                   check=True, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    layers = [layer["digest"] for layer in manifest["layers"]]
    blob = out / layers[0].split(":", 1)[1]
    root = tmp / "layer"
    root.mkdir()
    subprocess.run(["tar", "-xzf", str(blob), "-C", str(root)], check=True,
                   capture_output=True)
    files = {p.relative_to(root).as_posix(): p.read_bytes()
             for p in sorted(root.rglob("*")) if p.is_file()}
    return layers, files


def test_publish_pushes_a_signed_one_layer_release(registry: LocalRegistry,
                                                   tmp_path: Path) -> None:
    pki = tmp_path / "state" / "pki"
    public = open_release_key(pki)
    ref = f"{registry.address}/edgefed/agent:0.9.1"
    out = publish(version="0.9.1", image=ref, pki_dir=pki,
                  registry=Registry(user=USER, password=PASSWORD, insecure=True))
    assert out.image == ref
    layers, files = pulled_layer(ref, tmp_path)
    assert len(layers) == 1
    assert set(files) == {"release/bundle.tar.gz", "release/release.json"}
    manifest = rel.read_manifest(files["release/release.json"])
    assert (manifest.version, manifest.sha256) == ("0.9.1", out.sha256)
    bundle = files["release/bundle.tar.gz"]
    rel.verify(manifest, bundle, trusted=[rel.parse_public_key(public)], version="0.9.1")
    rel.unpack(bundle, tmp_path / "slot", version="0.9.1")
    assert (tmp_path / "slot" / "edgecore" / "__init__.py").is_file()
    assert (tmp_path / "slot" / "shared" / "release.py").is_file()
    # another key does not verify it
    other = rel.generate_key(tmp_path / "other.key")
    with pytest.raises(rel.ReleaseError) as err:
        rel.verify(manifest, bundle,
                   trusted=[rel.parse_public_key(rel.public_key_b64(other))])
    assert err.value.reason == "signature"


def test_the_cli_publishes_and_says_what_is_next(registry: LocalRegistry, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    open_release_key(state / "pki")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    ref = f"{registry.address}/edgefed/agent:1.0.0"
    code = cloudcore_main(["release", "publish", "--version", "1.0.0", "--image", ref,
                           "--state-dir", str(state), "--registry-user", USER,
                           "--registry-password-file", str(pw), "--insecure-registry"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"published agent release 1.0.0 as {ref}" in printed.out
    assert f"fedctl upgrade nodes --version 1.0.0 --image {ref}" in printed.out


def test_refusals_say_why(registry: LocalRegistry, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ref = f"{registry.address}/edgefed/agent:0.9.2"
    with pytest.raises(PublishError, match=r"no release key at .*start cloudcore once"):
        publish(version="0.9.2", image=ref, pki_dir=pki)
    open_release_key(pki)
    with pytest.raises(PublishError, match=r"(?i)push to .* failed .*unauthorized"):
        publish(version="0.9.2", image=ref, pki_dir=pki,
                registry=Registry(user=USER, password="wrong", insecure=True))
    with pytest.raises(PublishError, match="not valid"):
        publish(version="../x", image=ref, pki_dir=pki)
    with pytest.raises(PublishError, match="not a Python package"):
        publish(version="0.9.2", image=ref, pki_dir=pki, source=tmp_path)
