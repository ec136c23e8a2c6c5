"""The edge image store: one content-addressed OCI layout plus unpacked rootfs cache.

Why this shape: a device pulls each image once and shares it between all the
containers that use it.  ``skopeo copy docker://REF oci:images:TAG`` puts the
blobs into a single OCI image layout (``images/``), so two images that share
layers share the blobs on disk; ``umoci raw unpack`` turns a manifest into a
read-only rootfs under ``rootfs-cache/<digest>/`` exactly once; containers
then get a copy-on-write overlay on top of it (see ``crun.py``).

Tags in the layout are derived from the full image reference (registry, name
and tag), so ``pull`` is IfNotPresent: a reference already in the index is
never fetched again.  Writes to the layout are serialised with one lock —
skopeo rewrites ``index.json`` and an edge device pulls rarely.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecore.runtime._proc import run_cmd
from edgecore.runtime.errors import ImagePullError, ImageUnpackError, InvalidSpec

__all__ = ["ImageConfig", "ImageStore", "normalize_ref", "registry_of"]

_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
_REF_NAME = "org.opencontainers.image.ref.name"


def normalize_ref(image: str) -> str:
    """``busybox`` -> ``busybox:latest``; references with a tag or digest are kept."""
    if not _REF_RE.match(image) or "//" in image:
        raise InvalidSpec(f"image reference {image!r} is not valid")
    if "@" in image:
        return image
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last else f"{image}:latest"


def registry_of(image: str) -> str:
    """The registry host[:port] of a reference (``docker.io`` if it has none)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _layout_tag(ref: str) -> str:
    """An OCI layout tag for ``ref``: readable, unique, and within skopeo's charset."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", ref)[:100]
    return f"{readable}-{hashlib.sha256(ref.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config the runtime turns into a process."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]
    working_dir: str
    user: str
    stop_signal: str | None


class ImageStore:
    """Pulls images with skopeo into ``root/images`` and unpacks them with umoci."""

    def __init__(
        self,
        root: Path,
        *,
        insecure_registries: tuple[str, ...] = (),
        skopeo: str = "skopeo",
        umoci: str = "umoci",
        pull_timeout_s: float = 900.0,
        min_free_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.layout = root / "images"
        self.cache = root / "rootfs-cache"
        self._policy = root / "policy.json"
        self._insecure = frozenset(insecure_registries)
        self._skopeo = skopeo
        self._umoci = umoci
        self._pull_timeout_s = pull_timeout_s
        self._min_free_bytes = min_free_bytes
        self._lock = asyncio.Lock()
        self.cache.mkdir(parents=True, exist_ok=True)
        # Our own policy file: the store must not depend on the host's
        # /etc/containers.  Signature checking is not done (see docs/runtime.md).
        if not self._policy.exists():
            self._policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')

    # -- lookups (small local files; read synchronously) -------------------

    def _index(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.layout / "index.json").read_text())
        except FileNotFoundError:
            return {"manifests": []}
        return data

    def _blob(self, digest: str) -> dict[str, Any]:
        algo, _, hexdigest = digest.partition(":")
        data: dict[str, Any] = json.loads((self.layout / "blobs" / algo / hexdigest).read_bytes())
        return data

    def digest_of(self, image: str) -> str | None:
        """The manifest digest of ``image`` if it is in the store, else ``None``."""
        tag = _layout_tag(normalize_ref(image))
        for desc in self._index().get("manifests", []):
            if desc.get("annotations", {}).get(_REF_NAME) == tag:
                return str(desc["digest"])
        return None

    def config(self, digest: str) -> ImageConfig:
        """The runtime-relevant image config of the manifest ``digest``."""
        manifest = self._blob(digest)
        cfg = self._blob(manifest["config"]["digest"]).get("config") or {}
        return ImageConfig(
            entrypoint=tuple(cfg.get("Entrypoint") or ()),
            cmd=tuple(cfg.get("Cmd") or ()),
            env=tuple(cfg.get("Env") or ()),
            working_dir=cfg.get("WorkingDir") or "/",
            user=cfg.get("User") or "",
            stop_signal=cfg.get("StopSignal") or None,
        )

    def blob_count(self) -> int:
        """How many blobs the layout holds (for tests and disk accounting)."""
        blobs = self.layout / "blobs" / "sha256"
        return sum(1 for _ in blobs.iterdir()) if blobs.exists() else 0

    # -- pull / unpack ------------------------------------------------------

    async def pull(self, image: str, *, insecure: bool | None = None) -> str:
        """Copy ``image`` into the layout unless present; return the manifest digest.

        ``insecure=None`` means: plain HTTP / no TLS verification only for
        registries listed in ``insecure_registries``.
        """
        ref = normalize_ref(image)
        if (digest := self.digest_of(ref)) is not None:
            return digest
        async with self._lock:
            if (digest := self.digest_of(ref)) is not None:
                return digest
            free = (await asyncio.to_thread(shutil.disk_usage, self.cache)).free
            if free < self._min_free_bytes:
                raise ImagePullError(
                    f"pull {ref}: only {free // 2**20} MiB free under {self.cache}, "
                    f"need at least {self._min_free_bytes // 2**20} MiB"
                )
            if insecure is None:
                insecure = registry_of(ref) in self._insecure
            argv = [self._skopeo, "--policy", str(self._policy), "copy", "--quiet"]
            if insecure:
                argv.append("--src-tls-verify=false")
            argv += [f"docker://{ref}", f"oci:{self.layout}:{_layout_tag(ref)}"]
            await run_cmd(
                argv, error=ImagePullError, what=f"pull {ref}", timeout=self._pull_timeout_s
            )
            digest = self.digest_of(ref)
            if digest is None:
                raise ImagePullError(
                    f"pull {ref}: skopeo succeeded but the tag is not in the index"
                )
            return digest

    def rootfs_path(self, digest: str) -> Path:
        return self.cache / digest.replace(":", "-")

    async def rootfs(self, image: str) -> tuple[str, Path]:
        """Unpack ``image`` (already pulled) once; return its digest and read-only rootfs."""
        ref = normalize_ref(image)
        digest = self.digest_of(ref)
        if digest is None:
            raise ImageUnpackError(f"unpack {ref}: image is not in the store; pull it first")
        target = self.rootfs_path(digest)
        if target.exists():
            return digest, target
        async with self._lock:
            if target.exists():
                return digest, target
            tmp = self.cache / f".tmp-{uuid.uuid4().hex}"
            try:
                await run_cmd(
                    [
                        self._umoci,
                        "raw",
                        "unpack",
                        "--image",
                        f"{self.layout}:{_layout_tag(ref)}",
                        str(tmp),
                    ],
                    error=ImageUnpackError,
                    what=f"unpack {ref}",
                    timeout=self._pull_timeout_s,
                )
                # rename is atomic: a crash leaves only a .tmp- dir, never a half rootfs.
                os.rename(tmp, target)
            finally:
                if tmp.exists():
                    await asyncio.to_thread(shutil.rmtree, tmp, True)
        return digest, target
