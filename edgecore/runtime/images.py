"""The edge image store: one content-addressed OCI layout plus unpacked rootfs cache.

Why this shape: a device pulls each image once and shares it between all the
containers that use it.  ``skopeo copy docker://REF oci:images:TAG`` puts the
blobs into a single OCI image layout (``images/``), so two images that share
layers share the blobs on disk; ``umoci raw unpack`` turns a manifest into a
read-only rootfs under ``rootfs-cache/<digest>/`` exactly once; containers
then get a copy-on-write overlay on top of it (see ``crun.py``).

Tags in the layout are derived from the full image reference (registry, name
and tag), so ``pull`` with the default IfNotPresent policy never fetches a
reference already in the index.  Writes to the layout (pulls, unpacks, gc) are
serialised with one lock — skopeo rewrites ``index.json`` and an edge device
pulls rarely.

``image-usage.json`` next to the layout maps each layout tag to its original
reference and last-use time; it drives :meth:`ImageStore.images` and the
age/LRU order of :meth:`ImageStore.gc`.  gc deletes index entries, then
every blob no remaining manifest references, then unused unpacked rootfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecore.runtime._proc import CmdResult, describe, run_cmd
from edgecore.runtime.errors import (
    ImageNotPresent,
    ImagePullError,
    ImageUnpackError,
    InsufficientDisk,
    InvalidSpec,
    NoMatchingManifest,
)
from edgecore.runtime.registry_auth import RegistryCredentials
from edgecore.runtime.types import PULL_POLICIES, ImageInfo, PullPolicy, PullProgress

log = logging.getLogger(__name__)

__all__ = [
    "ImageConfig",
    "ImageStore",
    "host_platform",
    "normalize_ref",
    "registry_of",
]

_MACHINE_TO_OCI: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv8l": ("arm", "v7"),  # 32-bit userland on a 64-bit core
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "riscv64": ("riscv64", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
}


def host_platform(machine: str | None = None) -> tuple[str, str | None]:
    """OCI (architecture, variant) of this host, from ``os.uname().machine``."""
    m = (machine if machine is not None else os.uname().machine).lower()
    return _MACHINE_TO_OCI.get(m, (m, None))


# skopeo: "no image found in manifest list for architecture ..." (Docker lists)
# or "... in image index for architecture ..." (OCI indexes).
_NO_MANIFEST = re.compile(r"no image found in (manifest list|image index) for architecture")
_ENOSPC = "no space left on device"
# Why a skopeo/umoci call failed, in the words a user acts on; tried in order against
# its output (docs/edgecore.md: an ImagePullBackOff message says the cause first).
_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), cause) for pattern, cause in (
        (r"manifest unknown", "manifest unknown: the registry has no such tag or digest"),
        (r"name unknown|repository name not known",
         "name unknown: the registry has no such repository"),
        (r"server gave HTTP response to HTTPS client",
         "the registry answered plain HTTP to HTTPS: list it in --insecure-registry"),
        (r"connection refused", "connection refused by the registry"),
        (r"no such host|server misbehaving|Temporary failure in name resolution",
         "the registry's host name does not resolve"),
        (r"unauthorized|authentication required|requested access to the resource is denied",
         "the registry refused access (unauthorized)"),
        (r"x509:", "the registry's TLS certificate is not trusted"),
        (r"i/o timeout|deadline exceeded|TLS handshake timeout",
         "the registry did not answer in time"),
        (r"network is unreachable|no route to host", "the registry is unreachable"),
    ))
_SKOPEO_MSG = re.compile(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"')


def failure_cause(text: str) -> str:
    """The cause of a failed skopeo/umoci call in a few words: a known one, else the
    tool's own last message (skopeo's `msg="..."`), else its last line."""
    for pattern, cause in _CAUSES:
        if pattern.search(text):
            return cause
    found = _SKOPEO_MSG.findall(text)
    if found:
        return found[-1].replace('\\"', '"')[-300:]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][-300:] if lines else "no output"

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


_PUT_BLOB = "oci-put-blob"  # skopeo's temp file for a blob being written to the layout


@dataclass
class _ActivePull:
    """A pull in progress: what `pull_progress` needs to measure it."""

    ref: str
    insecure: bool
    copying: bool = False  # holds the store lock (else queued behind another pull)
    layers: list[tuple[str, int]] | None = None  # (digest, size) once the manifest is known
    inspecting: asyncio.Task[None] | None = None
    authfile: str | None = None  # the pull's credentials (0600), while it runs


def _pick_manifest(index: dict[str, Any], arch: str, variant: str | None) -> str | None:
    """The digest of the manifest for linux/arch[/variant] in an image index."""
    fits = [m for m in index.get("manifests", [])
            if (m.get("platform") or {}).get("os", "linux") == "linux"
            and (m.get("platform") or {}).get("architecture") == arch]
    exact = [m for m in fits if (m.get("platform") or {}).get("variant") == variant]
    chosen = (exact or fits or [None])[0]
    return None if chosen is None else str(chosen.get("digest"))


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
        min_free_bytes: int = 100 * 1024 * 1024,
        platform: tuple[str, str | None] | None = None,
    ) -> None:
        self.layout = root / "images"
        self.cache = root / "rootfs-cache"
        self._policy = root / "policy.json"
        self._usage_file = root / "image-usage.json"
        self.platform = platform if platform is not None else host_platform()
        if min_free_bytes < 0:
            raise InvalidSpec(f"min_free_bytes must be >= 0, got {min_free_bytes}")
        self._insecure = frozenset(insecure_registries)
        self._skopeo = skopeo
        self._umoci = umoci
        self._pull_timeout_s = pull_timeout_s
        self._min_free_bytes = min_free_bytes
        self._lock = asyncio.Lock()
        self._active: dict[str, _ActivePull] = {}
        self._pulls: dict[str, tuple[asyncio.Task[str], list[int]]] = {}  # ref -> (copy, waiters)
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

    def _free_bytes(self) -> int:
        """Free bytes for an unprivileged writer on the store's filesystem (statvfs)."""
        path = self.layout if self.layout.exists() else self.cache
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def _disk_error(self, what: str, free: int, *, enospc: bool = False) -> InsufficientDisk:
        needed = self._min_free_bytes
        cause = "ran out of disk space" if enospc else "refused: too little free disk space"
        return InsufficientDisk(
            f"{what}: {cause}: {free} bytes ({free / 2**20:.1f} MiB) free on the filesystem "
            f"of {self.layout.parent}, need at least {needed} bytes ({needed / 2**20:.1f} MiB, "
            "min_free_disk_bytes); free space or garbage-collect images",
            needed_bytes=needed,
            free_bytes=free,
        )

    async def pull(
        self, image: str, *, insecure: bool | None = None, policy: PullPolicy = "IfNotPresent",
        credentials: RegistryCredentials | None = None,
    ) -> str:
        """Make ``image`` present according to ``policy``; return the manifest digest.

        ``credentials`` (a pod's imagePullSecrets) are given to skopeo for this pull
        only, in a temporary authfile (0600, beside the store, removed after); they
        are never logged. Pods pulling the same image at once share one pull (and the
        first one's credentials), as they share its outcome.

        ``IfNotPresent``: copy only if the reference is not in the store.
        ``Always``: copy every time (cheap when nothing changed: skopeo skips
        blobs it has); the reference then points at the registry's current
        manifest.  ``Never``: raise :class:`ImageNotPresent` if it is missing.
        Before a copy, the free space of the store's filesystem must be at
        least ``min_free_bytes`` (else :class:`InsufficientDisk`).
        ``insecure=None`` means: plain HTTP / no TLS verification only for
        registries listed in ``insecure_registries``.
        """
        ref = normalize_ref(image)
        if policy not in PULL_POLICIES:
            raise InvalidSpec(f"pull policy {policy!r} must be one of {', '.join(PULL_POLICIES)}")
        if policy == "Never":
            if (digest := self.digest_of(ref)) is None:
                raise ImageNotPresent(
                    f"image {ref} is not present on this node and its pull policy is Never; "
                    "load it into the node's image store first"
                )
            return digest
        if policy == "IfNotPresent" and (digest := self.digest_of(ref)) is not None:
            return digest
        if insecure is None:
            insecure = registry_of(ref) in self._insecure
        # Pods that want the same image share one copy and its outcome: behind the
        # store lock, each would otherwise copy in turn, and from an unreachable
        # registry each failure takes a connect timeout (N pods of a dead image held
        # every other pull on the node for N x 60 s, new specs included).
        shared = self._pulls.get(ref)
        if shared is None:
            task = asyncio.create_task(self._pull_once(ref, insecure, policy, credentials),
                                       name=f"pull {ref}")
            shared = self._pulls[ref] = (task, [0])
            task.add_done_callback(lambda t, r=ref: self._pull_done(r, t))
        task, waiters = shared
        waiters[0] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if waiters[0] == 1 and not task.done():  # nobody else wants it: stop skopeo
                task.cancel()
            raise
        finally:
            waiters[0] -= 1

    def _pull_done(self, ref: str, task: asyncio.Task[str]) -> None:
        if self._pulls.get(ref, (None,))[0] is task:
            del self._pulls[ref]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have been cancelled

    async def _pull_once(self, ref: str, insecure: bool, policy: PullPolicy,
                         credentials: RegistryCredentials | None = None) -> str:
        authfile = (await asyncio.to_thread(self._write_authfile, credentials)
                    if credentials is not None else None)
        active = self._active.setdefault(ref, _ActivePull(ref, insecure, authfile=authfile))
        try:
            async with self._lock:
                active.copying = True
                return await self._copy(ref, insecure=insecure, policy=policy,
                                        authfile=authfile)
        finally:
            if authfile is not None:
                with contextlib.suppress(OSError):
                    os.unlink(authfile)
            if self._active.get(ref) is active:
                del self._active[ref]
            if active.inspecting is not None and not active.inspecting.done():
                active.inspecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await active.inspecting

    def _write_authfile(self, credentials: RegistryCredentials) -> str:
        """A containers-auth.json for one pull: created 0600 (mkstemp), beside the store."""
        import tempfile  # only pulls with credentials need it

        fd, path = tempfile.mkstemp(prefix=".auth-", suffix=".json", dir=self._policy.parent)
        try:
            os.write(fd, credentials.authfile())
        finally:
            os.close(fd)
        return path

    async def _copy(self, ref: str, *, insecure: bool, policy: PullPolicy,
                    authfile: str | None = None) -> str:
        """The pull proper, under the store lock."""
        if policy == "IfNotPresent" and (digest := self.digest_of(ref)) is not None:
            return digest
        free = await asyncio.to_thread(self._free_bytes)
        if free < self._min_free_bytes:
            raise self._disk_error(f"pull {ref}", free)
        arch, variant = self.platform
        argv = [self._skopeo, "--policy", str(self._policy), "--override-os", "linux",
                "--override-arch", arch]  # fmt: skip
        if variant:
            argv += ["--override-variant", variant]
        argv += ["copy", "--quiet"]
        if insecure:
            argv.append("--src-tls-verify=false")
        if authfile is not None:
            argv += ["--src-authfile", authfile]
        argv += [f"docker://{ref}", f"oci:{self.layout}:{_layout_tag(ref)}"]
        await self._run_tool(argv, what=f"pull {ref}", error=ImagePullError)
        digest = self.digest_of(ref)
        if digest is None:
            raise ImagePullError(
                f"pull {ref}: skopeo succeeded but the tag is not in the index"
            )
        self.mark_used(ref)
        return digest

    async def pull_progress(self, image: str) -> PullProgress | None:
        """How far the pull of ``image`` has got, or ``None`` if it is not being pulled.

        Measured, not reported by skopeo: the layer list and sizes come from the
        registry's manifest (``skopeo inspect --raw``, asked once per pull, in the
        background, on the first call: quick pulls never pay for it); bytes done are
        the layer blobs already in the layout plus skopeo's partly written temp blob
        files (``oci-put-blob*``). The store copies one image at a time, so those
        belong to this pull.
        """
        try:
            ref = normalize_ref(image)
        except InvalidSpec:
            return None
        active = self._active.get(ref)
        if active is None:
            return None
        if not active.copying:
            return PullProgress(ref=ref, bytes_done=0, bytes_total=None, layers_done=0,
                                layers_total=None, queued=True)
        if active.layers is None and active.inspecting is None:
            active.inspecting = asyncio.ensure_future(self._learn_layers(active))
        return await asyncio.to_thread(self._measure, active)

    def _partial_blobs(self) -> dict[str, int]:
        """skopeo's temp blob files in the layout: name -> bytes written so far."""
        out: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.layout):
                if entry.name.startswith(_PUT_BLOB):
                    with contextlib.suppress(OSError):
                        out[entry.name] = entry.stat().st_size
        return out

    def _measure(self, active: _ActivePull) -> PullProgress:
        layers = active.layers
        for _attempt in range(5):
            before = self._partial_blobs()
            done = [] if layers is None else [
                (d, n) for d, n in layers if self._blob_path(d).exists()]
            after = self._partial_blobs()
            # A temp file renamed into blobs/ between the looks would be counted twice
            # or not at all: take the look in which no temp file came or went.
            if before.keys() == after.keys():
                break
        partial = sum(after.values())
        if layers is None:
            return PullProgress(ref=active.ref, bytes_done=partial, bytes_total=None,
                                layers_done=0, layers_total=None)
        total = sum(n for _, n in layers)
        return PullProgress(ref=active.ref,
                            bytes_done=min(total, sum(n for _, n in done) + partial),
                            bytes_total=total, layers_done=len(done),
                            layers_total=len(layers))

    async def _inspect_raw(self, ref: str, insecure: bool,
                           authfile: str | None = None) -> dict[str, Any]:
        argv = [self._skopeo, "--policy", str(self._policy), "inspect", "--raw"]
        if insecure:
            argv.append("--tls-verify=false")
        if authfile is not None:
            argv += ["--authfile", authfile]
        argv.append(f"docker://{ref}")
        res = await run_cmd(argv, error=ImagePullError, what=f"inspect {ref}", timeout=60)
        doc: dict[str, Any] = json.loads(res.stdout)
        return doc

    async def _learn_layers(self, active: _ActivePull) -> None:
        """Fill ``active.layers`` from the registry (best effort: progress stays
        without totals if the registry cannot tell)."""
        try:
            doc = await self._inspect_raw(active.ref, active.insecure, active.authfile)
            if "manifests" in doc:  # an image index: the manifest for this platform
                digest = _pick_manifest(doc, *self.platform)
                if digest is None:
                    return
                name = active.ref.split("@", 1)[0]
                last = name.rsplit("/", 1)
                if ":" in last[-1]:
                    name = name.rsplit(":", 1)[0]
                doc = await self._inspect_raw(f"{name}@{digest}", active.insecure,
                                              active.authfile)
            active.layers = [(str(layer["digest"]), int(layer["size"]))
                             for layer in doc.get("layers", [])]
        except (ImagePullError, ValueError, KeyError, TypeError) as exc:
            log.debug("pull progress of %s: no layer sizes: %s", active.ref, exc)

    async def _run_tool(
        self, argv: list[str], *, what: str,
        error: type[ImagePullError] | type[ImageUnpackError],
    ) -> CmdResult:
        """Run skopeo/umoci (the pull timeout); a failure becomes the most specific
        error."""
        res = await run_cmd(argv, error=error, what=what, timeout=self._pull_timeout_s,
                            check=False)
        if res.returncode == 0:
            return res
        text = (res.stderr + res.stdout).decode(errors="replace")
        if _NO_MANIFEST.search(text):
            arch, variant = self.platform
            plat = f"linux/{arch}" + (f"/{variant}" if variant else "")
            raise NoMatchingManifest(
                f"{what}: the image has no manifest for this node's platform {plat} "
                f"(skopeo: {describe(argv, res)})"
            )
        if _ENOSPC in text.lower():
            free = await asyncio.to_thread(self._free_bytes)
            raise self._disk_error(what, free, enospc=True)
        raise error(f"{what}: {failure_cause(text)} ({describe(argv, res)})")

    # -- usage records, listing and garbage collection ---------------------

    def _usage(self) -> dict[str, dict[str, Any]]:
        try:
            data: dict[str, dict[str, Any]] = json.loads(self._usage_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def _write_usage(self, usage: dict[str, dict[str, Any]]) -> None:
        tmp = self._usage_file.with_suffix(f".tmp-{os.urandom(4).hex()}")
        tmp.write_text(json.dumps(usage))
        tmp.replace(self._usage_file)

    def mark_used(self, image: str, when: float | None = None) -> None:
        """Record that ``image`` was pulled or started a container (for gc's LRU order)."""
        ref = normalize_ref(image)
        usage = self._usage()
        usage[_layout_tag(ref)] = {"ref": ref, "last_used": time.time() if when is None else when}
        self._write_usage(usage)

    def _tagged(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (str(desc["annotations"][_REF_NAME]), desc)
            for desc in self._index().get("manifests", [])
            if desc.get("annotations", {}).get(_REF_NAME)
        ]

    def _blob_path(self, digest: str) -> Path:
        algo, _, hexdigest = digest.partition(":")
        return self.layout / "blobs" / algo / hexdigest

    def _referenced(self, desc: dict[str, Any]) -> set[str]:
        """Digests of ``desc`` and everything it points at (manifest, config, layers)."""
        out = {str(desc["digest"])}
        try:
            doc = self._blob(str(desc["digest"]))
        except (FileNotFoundError, ValueError):
            return out
        for child in doc.get("manifests", []):  # an image index
            out |= self._referenced(child)
        if "config" in doc:
            out.add(str(doc["config"]["digest"]))
        out |= {str(layer["digest"]) for layer in doc.get("layers", [])}
        return out

    def _info(self, tag: str, desc: dict[str, Any], usage: dict[str, Any]) -> ImageInfo:
        digest = str(desc["digest"])
        size = int(desc.get("size", 0))
        last_used: float | None = None
        try:
            manifest = self._blob(digest)
            size += int(manifest.get("config", {}).get("size", 0))
            size += sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
            last_used = self._blob_path(digest).stat().st_mtime
        except (FileNotFoundError, ValueError):
            pass
        rec = usage.get(tag, {})
        ref = str(rec.get("ref") or tag.rsplit("-", 1)[0])
        return ImageInfo(
            ref=ref,
            digest=digest,
            size_bytes=size,
            last_used=float(rec.get("last_used") or last_used or 0.0),
        )

    def images(self) -> list[ImageInfo]:
        """Every reference in the store, least recently used first."""
        usage = self._usage()
        infos = [self._info(tag, desc, usage) for tag, desc in self._tagged()]
        return sorted(infos, key=lambda i: (i.last_used, i.ref))

    async def gc(
        self,
        *,
        in_use_digests: Collection[str],
        keep_refs: Collection[str],
        max_age_s: float | None = None,
        target_free_bytes: int | None = None,
    ) -> list[str]:
        """Remove references not in ``keep_refs`` whose digest is not in ``in_use_digests``.

        Without ``max_age_s`` and ``target_free_bytes`` every such reference
        goes.  With ``max_age_s``, those unused for longer go; with
        ``target_free_bytes``, the least recently used go one by one until
        the filesystem has that much free space (or no candidate is left).
        Returns the references removed, in removal order.
        """
        keep_tags = {_layout_tag(normalize_ref(r)) for r in keep_refs}
        in_use = set(in_use_digests)
        removed: list[str] = []
        async with self._lock:
            usage = self._usage()
            candidates = sorted(
                (
                    (info, tag)
                    for tag, desc in self._tagged()
                    if tag not in keep_tags
                    and (info := self._info(tag, desc, usage)).digest not in in_use
                ),
                key=lambda c: c[0].last_used,
            )
            now = time.time()
            by_age = (
                [c for c in candidates if now - c[0].last_used > max_age_s]
                if max_age_s is not None
                else ([] if target_free_bytes is not None else list(candidates))
            )
            for info, tag in by_age:
                await self._remove_tag(tag, in_use)
                removed.append(info.ref)
            if target_free_bytes is not None:
                aged = {tag for _, tag in by_age}
                for info, tag in candidates:
                    if tag in aged:
                        continue
                    if await asyncio.to_thread(self._free_bytes) >= target_free_bytes:
                        break
                    await self._remove_tag(tag, in_use)
                    removed.append(info.ref)
            await self._sweep_cache(in_use)
        return removed

    async def _remove_tag(self, tag: str, in_use: set[str]) -> None:
        """Drop ``tag`` from the index, then unreferenced blobs and rootfs (lock held)."""
        index = self._index()
        index["manifests"] = [
            d for d in index.get("manifests", []) if d.get("annotations", {}).get(_REF_NAME) != tag
        ]
        tmp = self.layout / f".index-{os.urandom(4).hex()}.json"
        tmp.write_text(json.dumps(index))
        tmp.replace(self.layout / "index.json")
        usage = self._usage()
        if usage.pop(tag, None) is not None:
            self._write_usage(usage)
        keep: set[str] = set()
        for desc in index["manifests"]:
            keep |= self._referenced(desc)
        blobs = self.layout / "blobs" / "sha256"
        if blobs.exists():
            for blob in list(blobs.iterdir()):
                if f"sha256:{blob.name}" not in keep:
                    blob.unlink(missing_ok=True)
        await self._sweep_cache(in_use | {str(d["digest"]) for d in index["manifests"]})

    async def _sweep_cache(self, keep_digests: set[str]) -> None:
        """Delete unpacked rootfs of digests not kept, and leftovers of crashed unpacks.

        A rootfs is first renamed away (atomic), so a concurrent ``rootfs()``
        never finds a half-deleted directory.  Called with the lock held.
        """
        keep_names = {self.rootfs_path(d).name for d in keep_digests}
        keep_names |= {
            self.rootfs_path(str(d["digest"])).name for d in self._index().get("manifests", [])
        }
        for entry in list(self.cache.iterdir()):
            if entry.name in keep_names:
                continue
            doomed = entry
            if not entry.name.startswith((".tmp-", ".trash-")):
                doomed = self.cache / f".trash-{os.urandom(16).hex()}"
                os.rename(entry, doomed)
            await asyncio.to_thread(shutil.rmtree, doomed, True)

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
            tmp = self.cache / f".tmp-{os.urandom(16).hex()}"
            try:
                argv = [self._umoci, "raw", "unpack", "--image",
                        f"{self.layout}:{_layout_tag(ref)}", str(tmp)]  # fmt: skip
                await self._run_tool(argv, what=f"unpack {ref}", error=ImageUnpackError)
                # rename is atomic: a crash leaves only a .tmp- dir, never a half rootfs.
                os.rename(tmp, target)
            finally:
                if tmp.exists():
                    await asyncio.to_thread(shutil.rmtree, tmp, True)
        return digest, target
