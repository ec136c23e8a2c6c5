"""The corpus applied to a real fleet (issue 18: "What it must show").

A real `testbed`-style fleet (mosquitto, registry with the testbed's busybox, cloudcore,
two agents with real crun) gets every corpus manifest through `fedctl apply`, as a
user would, with `${IMAGE}` expanded to the fleet's busybox. Asserted per document
(tests/corpus/expected-fleet.yaml): applied, skipped, refused by fedctl (the fields) or
refused by cloudcore (the fields its pod security policy names at the default
`baseline` level). Then the pods that busybox can really run are asserted Running, and
one that waits for a ConfigMap nobody applied says so.

Most corpus programs (nginx, redis, php) do not exist in busybox, so their containers
exit and restart: those are asserted placed on a node, not Running.

`CORPUS_FLEET_WRITE=1` records today's outcomes in expected-fleet.yaml instead of
asserting them (review the diff).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_fleet import real_fleet

from testbed.fleet import Fleet, FleetSettings

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "manifests"
EXPECTED = HERE / "expected-fleet.yaml"

_ERROR = re.compile(r"^error: .*?#\d+(?:\.items\[\d+\])? \((?P<kind>[^/]+)/(?P<name>[^)]+)\): "
                    r"(?P<rest>.*)$")
_RESULT = re.compile(r"^(?P<ref>[a-z]+/\S+) (?P<action>created|configured|unchanged"
                     r"|skipped)\b")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with real_fleet(FleetSettings(nodes=2, workdir=tmp_path_factory.mktemp("fleet"),
                                  heartbeat_s=1.0)) as f:
        yield f


def outcomes_of(stdout: str, stderr: str) -> dict[str, Any]:
    """ref ("daemonset/web") -> applied | skipped | {refused: [fields]} |
    {refused by cloudcore: [fields]}, from what `fedctl apply` printed."""
    out: dict[str, Any] = {}
    for line in stdout.splitlines():
        m = _RESULT.match(line)
        if m:
            out[m["ref"]] = "skipped" if m["action"] == "skipped" else "applied"
    current: list[str] | None = None
    for line in stderr.splitlines():
        if line.startswith("  ") and current is not None:
            current.append(re.split(r"[=:]", line.strip(), maxsplit=1)[0])
            continue
        m = _ERROR.match(line)
        if not m:
            current = None
            continue
        ref, rest = f"{m['kind'].lower()}/{m['name']}", m["rest"]
        by_cloud = rest.startswith("refused by cloudcore: ")
        current = []
        out[ref] = {"refused by cloudcore" if by_cloud else "refused": current}
        if by_cloud:
            rest = rest.removeprefix("refused by cloudcore: ")
            if not rest.endswith(":"):  # one problem, on this line
                current.append(rest)
        elif not re.match(r"^refused, \d+ problems:$", rest):
            current.append(rest.split(": ", 1)[0])
    return out


@pytest.fixture(scope="module")
def applied(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every corpus file through `fedctl apply`: file name -> outcomes_of its output."""
    tmp = tmp_path_factory.mktemp("corpus")
    got: dict[str, Any] = {}
    for src in sorted(p for p in CORPUS.glob("*.yaml") if p.name != "expected.yaml"):
        f = tmp / src.name
        f.write_text(src.read_text().replace("${IMAGE}", fleet.image))
        # --create-namespace, as a kubectl user applies the project's namespace manifest
        # first (kube-prometheus' node-exporter goes into `monitoring`): namespaces must
        # exist (tests/cloudcore/test_namespaces_exist.py)
        r = fleet.fedctl("apply", "--create-namespace", "-f", str(f), check=False)
        got[src.name] = outcomes_of(r.stdout, r.stderr)
        refused = any(isinstance(v, dict) for v in got[src.name].values())
        assert r.returncode == (1 if refused else 0), (src.name, r.stdout, r.stderr)
    return got


def test_the_corpus_on_a_real_fleet(applied: dict[str, Any]) -> None:
    got = applied
    if os.environ.get("CORPUS_FLEET_WRITE"):
        EXPECTED.write_text(
            "# What `fedctl apply` of each corpus manifest gives on a real fleet (cloudcore's\n"
            "# default policy level, baseline), per document; written by\n"
            "# `CORPUS_FLEET_WRITE=1 pytest tests/corpus/test_corpus_fleet.py`.\n"
            + yaml.safe_dump(got, sort_keys=True, width=88))
        pytest.skip(f"wrote {EXPECTED}")
    want = yaml.safe_load(EXPECTED.read_text())
    for name in sorted(set(want) | set(got)):
        assert got.get(name) == want.get(name), name


def _pods(fleet: Fleet, prefix: str) -> list[dict[str, Any]]:
    return [p for p in fleet.pods() if p["metadata"]["name"].startswith(prefix)]


def _state(pod: dict[str, Any]) -> tuple[str, list[tuple[str, str | None]]]:
    st = pod.get("status") or {}
    return st.get("phase", "Pending"), [(c.get("state"), c.get("reason"))
                                         for c in st.get("containerStatuses") or []]


def test_what_busybox_can_run_runs(fleet: Fleet, applied: dict[str, Any]) -> None:
    """After the corpus is applied: the downward-API env pod and
    the Deployment with a sidecar run; the pod whose ConfigMap was never applied waits
    and says which; every pod of an applied workload was placed on a node."""
    def running(prefix: str, containers: int) -> bool:
        pods = _pods(fleet, prefix)
        return bool(pods) and all(
            _state(p) == ("Running", [("running", None)] * containers) for p in pods)

    fleet.wait(lambda: running("dapi-envars-fieldref", 1), timeout=90,
               what="dapi-envars-fieldref Running")
    fleet.wait(lambda: running("myapp-", 1), timeout=90, what="myapp Running")
    [waiting] = fleet.wait(lambda: _pods(fleet, "dapi-test-pod"), timeout=30,
                           what="dapi-test-pod")

    def config_error() -> bool:
        [p] = _pods(fleet, "dapi-test-pod")
        return _state(p)[1] == [("waiting", "CreateContainerConfigError")] and (
            "special-config not found" in (p.get("status") or {}).get("message", ""))

    fleet.wait(config_error, timeout=60, what=f"dapi-test-pod waiting ({waiting})")
    for prefix in ("nginx-deployment-", "my-nginx-", "frontend-", "redis-leader-"):
        pods = _pods(fleet, prefix)
        assert pods and all((p.get("status") or {}).get("nodeName") for p in pods), prefix
    # KubeEdge's edgemesh demo requires nodes labelled node-role.kubernetes.io/edge and
    # .../agent (required node affinity): the testbed's are not, so its pod waits, saying so
    [demo] = _pods(fleet, "demo-edge-")
    assert (demo.get("status") or {}).get("message") == (
        "0/2 nodes available: 2 node affinity mismatch (node-role.kubernetes.io/edge Exists, "
        "node-role.kubernetes.io/agent Exists)"), demo.get("status")
