"""A stub of cloudcore's HTTP API for the fedctl tests.

It implements the contract fedctl relies on (apply, list with filters, get,
delete, JSON errors) over a real socket with http.server in a thread, so the
tests exercise httpx, URLs and status codes exactly as against cloudcore. It
validates applied documents with shared.models like the real server, rejects
a document annotated `stub/reject` to let tests see a server-side error, and
answers the apply of one annotated `stub/delay: SECONDS` that much later.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from shared.errors import ObjectError
from shared.models import parse_object

PLURALS = {
    "Node": "nodes",
    "Pod": "pods",
    "DaemonSet": "daemonsets",
    "Deployment": "deployments",
    "ConfigMap": "configmaps",
}
CLUSTER_SCOPED = {"nodes"}


@dataclass
class Stub:
    url: str
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    applied: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, obj: dict[str, Any]) -> None:
        """Store an object as cloudcore would (used to seed nodes and pods)."""
        plural = PLURALS[obj["kind"]]
        meta = obj.setdefault("metadata", {})
        ns = "" if plural in CLUSTER_SCOPED else meta.setdefault("namespace", "default")
        meta.setdefault("creationTimestamp", time.time() - 300)
        with self.lock:
            self.objects[(plural, ns, meta["name"])] = obj

    def find(self, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.objects.get((plural, ns, name))


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels", {})
    for term in filter(None, selector.split(",")):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple[list[str], dict[str, list[str]]]:
            parts = urlsplit(self.path)
            segs = [unquote(s) for s in parts.path.split("/") if s]
            return segs, parse_qs(parts.query)

        def _key(self, segs: list[str]) -> tuple[str, str, str] | None:
            plural = segs[2]
            if plural in CLUSTER_SCOPED and len(segs) == 4:
                return plural, "", segs[3]
            if plural not in CLUSTER_SCOPED and len(segs) == 5:
                return plural, segs[3], segs[4]
            return None

        def do_GET(self) -> None:
            segs, q = self._route()
            stub.requests.append(("GET", self.path, None))
            if len(segs) == 3 and segs[:2] == ["api", "v1"] and segs[2] in PLURALS.values():
                with stub.lock:
                    items = [
                        copy.deepcopy(o) for (p, _, _), o in stub.objects.items() if p == segs[2]
                    ]
                if "namespace" in q:
                    items = [
                        o for o in items if o["metadata"].get("namespace") == q["namespace"][0]
                    ]
                if "labelSelector" in q:
                    items = [o for o in items if _matches(o, q["labelSelector"][0])]
                if "node" in q:
                    node = q["node"][0]
                    items = [
                        o
                        for o in items
                        if node
                        in (o.get("spec", {}).get("nodeName"), o.get("status", {}).get("nodeName"))
                    ]
                self._send(200, {"items": items})
                return
            key = self._key(segs) if len(segs) >= 4 else None
            obj = stub.find(*key) if key else None
            if obj is None:
                self._send(404, {"error": "not found", "field": None})
                return
            self._send(200, obj)

        def do_DELETE(self) -> None:
            segs, _ = self._route()
            stub.requests.append(("DELETE", self.path, None))
            key = self._key(segs) if len(segs) >= 4 else None
            with stub.lock:
                obj = stub.objects.pop(key, None) if key else None
            if obj is None:
                self._send(404, {"error": "not found", "field": None})
                return
            self._send(200, obj)

        def do_POST(self) -> None:
            segs, _ = self._route()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stub.requests.append(("POST", self.path, body))
            if segs != ["api", "v1", "apply"]:
                self._send(404, {"error": "no such route"})
                return
            results = []
            for doc in body["documents"]:
                try:
                    parse_object(doc)
                except ObjectError as exc:
                    self._send(400, {"error": exc.message, "field": exc.field})
                    return
                delay = doc.get("metadata", {}).get("annotations", {}).get("stub/delay")
                if delay:  # a slow cloud: answers after this many seconds
                    time.sleep(float(delay))
                reject = doc.get("metadata", {}).get("annotations", {}).get("stub/reject")
                if reject:
                    self._send(422, {"error": reject, "field": "metadata.annotations"})
                    return
            for doc in body["documents"]:
                plural = PLURALS[doc["kind"]]
                ns = "" if plural in CLUSTER_SCOPED else doc["metadata"].get("namespace", "default")
                key = (plural, ns, doc["metadata"]["name"])
                old = stub.find(*key)
                if old is None:
                    action = "created"
                elif stub.applied.get(key) == doc:
                    action = "unchanged"
                else:
                    action = "configured"
                if not body.get("dryRun"):
                    stored = copy.deepcopy(doc)
                    if old is not None:
                        stored["metadata"]["creationTimestamp"] = old["metadata"][
                            "creationTimestamp"
                        ]
                        if "status" in old:
                            stored["status"] = old["status"]
                    stub.applied[key] = copy.deepcopy(doc)
                    stub.put(stored)
                results.append(
                    {
                        "kind": doc["kind"],
                        "namespace": ns or None,
                        "name": doc["metadata"]["name"],
                        "action": action,
                    }
                )
            self._send(200, {"results": results})

    return Handler


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    s = Stub(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(s)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fedctl-stub", daemon=True
    )
    thread.start()
    try:
        yield s
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No test may see the developer's FEDCTL_SERVER or ~/.config, or forced colors."""
    monkeypatch.delenv("FEDCTL_SERVER", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for var in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
