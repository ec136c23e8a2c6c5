"""A local OCI registry for the testbed, and a busybox image built without Docker.

The testbed must run offline on one machine, so it cannot pull from Docker
Hub.  Instead it builds a busybox image from the host's static busybox with
umoci and serves it from Debian's ``docker-registry`` (distribution v2) on a
free loopback port.  Edge agents then pull it exactly as they would pull from
a real registry (plain HTTP: list its address in ``insecure_registries``).

``LocalRegistry(auth=(user, password))`` protects it with htpasswd (bcrypt, written
with the C library's crypt(3): no Apache tools needed), for pulls with
``imagePullSecrets``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = ["APPLETS", "LocalRegistry", "RegistryError", "build_busybox_image",
           "htpasswd_line", "seed_busybox"]

APPLETS = (
    "sh", "httpd", "wget", "sleep", "cat", "echo", "ls", "env", "id", "true", "false",
    "head", "dd", "mkdir", "rm", "ps", "kill", "hostname", "yes", "tail", "grep", "touch",
    "seq", "printf", "test", "[", "nc",
)  # fmt: skip
INDEX_HTML = "<html><body><h1>hello from edgefed</h1></body></html>\n"


class RegistryError(RuntimeError):
    """The local registry could not be started, seeded or stopped."""


def _run(argv: list[str], what: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RegistryError(
            f"{what}: `{' '.join(argv)}` exited {res.returncode}: {res.stderr.strip()}"
        )


def build_busybox_image(
    layout_dir: Path, tag: str = "latest", *, busybox: str | None = None
) -> None:
    """Build a busybox OCI image at ``layout_dir:tag`` from the host's static busybox.

    The image has ``/bin/busybox`` with applet symlinks (:data:`APPLETS`),
    ``/www/index.html`` saying "hello from edgefed", ``/tmp`` and ``cmd ["sh"]``.
    """
    busybox = busybox or shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).is_file():
        raise RegistryError(f"busybox not found at {busybox}; apt-get install busybox-static")
    layout_dir = Path(layout_dir)
    image = f"{layout_dir}:{tag}"
    if not (layout_dir / "index.json").exists():
        _run(["umoci", "init", "--layout", str(layout_dir)], "umoci init")
    _run(["umoci", "new", "--image", image], "umoci new")
    with tempfile.TemporaryDirectory(prefix="edgefed-bb-") as tmp:
        bundle = Path(tmp) / "bundle"
        _run(["umoci", "unpack", "--image", image, str(bundle)], "umoci unpack")
        rootfs = bundle / "rootfs"
        for d in ("bin", "www", "tmp", "etc", "proc", "sys", "dev"):
            (rootfs / d).mkdir(exist_ok=True)
        (rootfs / "tmp").chmod(0o1777)
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        (rootfs / "bin" / "busybox").chmod(0o755)
        for applet in APPLETS:
            link = rootfs / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        (rootfs / "www" / "index.html").write_text(INDEX_HTML)
        (rootfs / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        )
        (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        _run(["umoci", "repack", "--image", image, str(bundle)], "umoci repack")
    _run(
        ["umoci", "config", "--image", image, "--config.cmd", "sh",
         "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "umoci config",
    )  # fmt: skip
    _run(["umoci", "gc", "--layout", str(layout_dir)], "umoci gc")


_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def htpasswd_line(user: str, password: str, *, cost: int = 4) -> str:
    """``user:$2b$...``: an htpasswd entry with a bcrypt hash (what docker-registry reads),
    made with libcrypt's crypt(3)."""
    name = ctypes.util.find_library("crypt")
    if name is None:
        raise RegistryError("libcrypt not found: cannot hash an htpasswd password")
    lib = ctypes.CDLL(name)
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    # 22 salt characters; the last carries 2 bits only, so it is one of the canonical four.
    salt = "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(21)) + secrets.choice(".Oeu")
    hashed = lib.crypt(password.encode(), f"$2b${cost:02d}${salt}".encode())
    if not hashed or not hashed.startswith(b"$2"):
        raise RegistryError("this C library's crypt(3) does not do bcrypt")
    return f"{user}:{hashed.decode()}"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class LocalRegistry:
    """``docker-registry`` on ``host``:<free port> with filesystem storage; no auth
    unless ``auth=(user, password)`` (htpasswd: every request needs those credentials).

    ``host`` is 127.0.0.1 by default; the testbed binds its bridge address so agents
    in their own network namespaces pull from it. ``port`` 0 picks a free one; a
    given port lets a registry take over another's address (agents list it as
    insecure by address).

    Use as ``with LocalRegistry() as reg:`` or ``async with LocalRegistry() as reg:``.
    The process is started on enter (once ``/v2/`` answers) and stopped on exit.
    """

    def __init__(self, *, binary: str = "docker-registry", startup_timeout_s: float = 15.0,
                 host: str = "127.0.0.1", auth: tuple[str, str] | None = None,
                 port: int = 0) -> None:
        self._binary = binary
        self.auth = auth
        self.port = port
        self.host = host
        self._startup_timeout_s = startup_timeout_s
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        if self._proc is not None:
            raise RegistryError("registry already started")
        self._tmp = tempfile.TemporaryDirectory(prefix="edgefed-registry-")
        tmp = Path(self._tmp.name)
        last_error = ""
        for _attempt in range(3):  # the free port can be taken between probe and bind
            port = self.port or _free_port(self.host)
            config = tmp / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'data'}\n"
                "  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.host}:{port}\n"
            )
            if self.auth is not None:
                htpasswd = tmp / "htpasswd"
                htpasswd.write_text(htpasswd_line(*self.auth) + "\n")
                with config.open("a") as f:
                    f.write(f"auth:\n  htpasswd:\n    realm: edgefed\n    path: {htpasswd}\n")
            log = (tmp / "registry.log").open("ab")
            try:
                self._proc = subprocess.Popen(
                    [self._binary, "serve", str(config)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                )  # fmt: skip
            except FileNotFoundError as exc:
                self.stop()
                raise RegistryError(
                    f"{self._binary} not installed (apt-get install docker-registry)"
                ) from exc
            finally:
                log.close()
            self.address = f"{self.host}:{port}"
            if self._wait_ready():
                return
            last_error = (tmp / "registry.log").read_text(errors="replace")[-2000:]
            self._kill()
        self.stop()
        raise RegistryError(f"docker-registry did not come up: {last_error}")

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1) as resp:
                    if resp.status == 200:
                        return True
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and self.auth is not None:  # up, and asking who we are
                    return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        return False

    def _kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """Stop the registry process and delete its storage."""
        self._kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def push_oci(self, layout_dir: Path, name: str, tag: str = "latest") -> str:
        """Push ``layout_dir:tag`` as ``<address>/name:tag``; return that reference."""
        if self._proc is None:
            raise RegistryError("registry is not running")
        ref = f"{self.address}/{name}:{tag}"
        creds = ["--dest-creds", f"{self.auth[0]}:{self.auth[1]}"] if self.auth else []
        _run(
            ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
             *creds, f"oci:{layout_dir}:{tag}", f"docker://{ref}"],
            f"push {ref}",
        )  # fmt: skip
        return ref

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalRegistry:
        import asyncio

        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)


def seed_busybox(registry: LocalRegistry, *, name: str = "busybox", tag: str = "latest") -> str:
    """Build the busybox image and push it to ``registry``; return its reference."""
    with tempfile.TemporaryDirectory(prefix="edgefed-bb-layout-") as tmp:
        layout = Path(tmp) / "layout"
        build_busybox_image(layout, tag)
        return registry.push_oci(layout, name, tag)
