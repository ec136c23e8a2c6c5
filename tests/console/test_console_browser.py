"""The console in a real headless Chromium against a real `testbed up` fleet.

One fleet for the module, started by the one helper every real-fleet test uses
(`tests/fixtures_fleet.real_fleet`, i.e. `testbed.fleet.Fleet` as `testbed up` runs it):
mosquitto with TLS and the password file, the local registry seeded with busybox,
`cloudcore` as a process (HTTPS, tokens) and two `edgecore` agents, each joined with
its own token and running in its own network namespace, running real crun containers.
Nothing is simulated or scripted: the rollout moves as the agents report their real
containers, the log is a real container's, exec runs in it.

Agents send a telemetry point a minute and cloudcore forecasts once a minute by
default; here the agents run with `--telemetry-sample 1 --telemetry-point 2` and
cloudcore with `--forecast-interval 2` (both ordinary flags of the binaries), so the
node page plots the agent's own telemetry and the forecaster's own forecast within
seconds instead of minutes. The points still land in one-minute buckets, as any
agent's would.

Chromium is Debian's (`/usr/bin/chromium`, installed by `make test`), driven by
Playwright; no browser is ever downloaded. The page trusts the fleet CA only through
`ignore_https_errors` (the test's browser has no CA store of ours); everything else is
what an operator's browser does. Skipped without root (real containers and network
namespaces), as every real-fleet test is; failed, not skipped, when a system package
is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures_fleet import real_fleet

from testbed.fleet import Fleet, FleetSettings

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
NODES = 2
NAMES = [f"edge-{i + 1}" for i in range(NODES)]
EVIL = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
DOCS = Path(__file__).resolve().parents[2] / "docs"
ROW = "tr[data-workload='default/probe']"

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (make test installs it)",
                allow_module_level=True)
async_api = pytest.importorskip("playwright.async_api",
                                reason="playwright is missing: pip install -e '.[dev]'")


class Cloud:
    """The fleet's API as the admin, and tokens of other roles."""

    def __init__(self, fleet: Fleet) -> None:
        assert fleet.ca_file is not None and fleet.admin_token
        self.fleet = fleet
        self.url = fleet.api
        self.admin = fleet.admin_token
        self.ctx = ssl.create_default_context(cafile=str(fleet.ca_file))

    async def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.url, verify=self.ctx, timeout=10) as c:
            return await c.request(method, path,
                                   headers={"Authorization": f"Bearer {token or self.admin}"},
                                   **kw)

    async def token(self, role: str) -> str:
        r = await self.call("POST", "/api/v1/apitokens",
                            json={"role": role, "name": f"console-{role}"})
        assert r.status_code == 200, r.text
        return str(r.json()["token"])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    settings = FleetSettings(nodes=NODES, workdir=tmp_path_factory.mktemp("console"),
                             heartbeat_s=2.0,
                             agent_args=("--telemetry-sample", "1", "--telemetry-point", "2"),
                             cloud_args=("--forecast-interval", "2"))
    with real_fleet(settings) as f:
        yield f


@pytest.fixture(scope="module")
def cloud(fleet: Fleet) -> Cloud:
    return Cloud(fleet)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Debian chromium per test (pytest-asyncio gives each test its loop)."""
    async with async_api.async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def open_console(browser: Any, cloud: Cloud, token: str, route: str = "") -> Any:
    page = await browser.new_page(ignore_https_errors=True,
                                  viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    said: list[str] = []  # what the page logged and asked, for a failure's message
    page.on("console", lambda m: said.append(f"console.{m.type}: {m.text}"))
    page.on("requestfailed", lambda r: said.append(f"failed: {r.url} {r.failure}"))
    page.on("response", lambda r: said.append(f"{r.status} {r.url}"))
    await page.goto(cloud.url + "/", wait_until="domcontentloaded")
    assert page.url.endswith("/console/"), page.url  # / redirects to the console
    try:
        await page.wait_for_selector("#signin:not([hidden])", timeout=20_000)
    except async_api.TimeoutError:
        raise AssertionError(f"no sign-in form after 20 s: errors {errors}, {said}") from None
    await page.fill("#token", token)
    await page.click("#signin-form button[type=submit]")
    await page.wait_for_selector("#who:not(:empty)")
    if route:
        await page.evaluate("r => { location.hash = r; }", route)
    return page


async def shot(page: Any, name: str) -> None:
    """Screenshots for docs/console.md, when asked for (CONSOLE_SCREENSHOTS=1)."""
    if os.environ.get("CONSOLE_SCREENSHOTS"):
        await page.screenshot(path=str(DOCS / f"console-{name}.png"), full_page=True)


# ---- the DaemonSet, as a user writes it for fedctl ------------------------------------

def probe_yaml(image: str, script: str, *, min_ready: int = 0) -> str:
    """A DaemonSet on every node, rolled one node at a time; `script` is its shell;
    an updated pod passes the health gate once Ready for `min_ready` seconds."""
    return f"""\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: probe
  namespace: default
spec:
  minReadySeconds: {min_ready}
  selector:
    matchLabels: {{app: probe}}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate: {{maxUnavailable: 1}}
  template:
    metadata:
      labels: {{app: probe}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: c
          image: {image}
          command: ["sh", "-c", {json.dumps(script)}]
"""


def ticker(version: str) -> str:
    """A container that logs a numbered line a second and stops at once on SIGTERM."""
    return (f"trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo \"{version} tick $i\"; "
            "sleep 1; done")


def apply_probe(fleet: Fleet, script: str, *, min_ready: int = 0) -> str:
    """`fedctl apply -f -` (the real CLI, as a process, through the fleet's context)."""
    r = fleet.fedctl("apply", "-f", "-",
                     stdin=probe_yaml(fleet.image, script, min_ready=min_ready))
    return r.stdout


def probe_pods_running(fleet: Fleet, version: str) -> list[str]:
    """The probe's pods, once there is one Running and Ready on every node with the
    `version` template (else an empty list)."""
    pods = fleet.pods("app=probe")
    good = [p for p in pods
            if (p.get("status") or {}).get("phase") == "Running"
            and (p.get("status") or {}).get("ready")
            and version in json.dumps(p["spec"]["containers"][0].get("command"))]
    nodes = {(p.get("status") or {}).get("nodeName") or p["spec"].get("nodeName")
             for p in good}
    return sorted(p["metadata"]["name"] for p in good) if nodes >= set(NAMES) else []


def ensure_probe(fleet: Fleet) -> str:
    """A Running probe pod on edge-1 (applied here when this test runs alone)."""
    if not fleet.pods("app=probe"):
        apply_probe(fleet, ticker("v1"))

    def running() -> str | None:
        for p in fleet.pods("app=probe"):
            st = p.get("status") or {}
            if st.get("nodeName") == NAMES[0] and st.get("phase") == "Running" \
                    and st.get("ready"):
                return str(p["metadata"]["name"])
        return None

    return str(fleet.wait(running, timeout=60, what="a probe pod Running on edge-1"))


# ---- tests ----------------------------------------------------------------------------

async def test_console_is_served_with_a_strict_csp_and_no_data(cloud: Cloud) -> None:
    async with httpx.AsyncClient(verify=cloud.ctx) as c:
        r = await c.get(cloud.url + "/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/console/"
        page = await c.get(cloud.url + "/console/")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "onclick" not in page.text and "<script>" not in page.text
        js = await c.get(cloud.url + "/console/static/console.js")
        assert js.status_code == 200
        assert not re.search(r"(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|eval\(",
                             js.text)
        assert (await c.get(cloud.url + "/console/static/nope.js")).status_code == 404
        # the console's own summary needs a token like the API
        assert (await c.get(cloud.url + "/console/api/overview")).status_code == 401
        # the real service's /metrics (prometheus-client): fleet gauges and loop lag
        text = (await c.get(cloud.url + "/metrics")).text
        assert f'cloudcore_nodes{{ready="Ready"}} {float(NODES)}' in text
        assert "cloudcore_event_loop_lag_seconds " in text
        assert "cloudcore_event_loop_lag_max_seconds " in text
        assert "process_cpu_seconds_total " in text


async def test_sign_in_see_the_nodes_and_open_one_with_its_forecast(browser: Any,
                                                                    cloud: Cloud) -> None:
    # the agent's telemetry reached the cloud and the forecaster ran over it
    def forecast() -> Any:
        t = cloud.fleet.get(f"/console/api/nodes/{NAMES[0]}/telemetry")
        return t if t["points"] and t["forecast"] else None

    await _in_thread(cloud.fleet.wait, forecast, timeout=60,
                     what=f"telemetry and a forecast of {NAMES[0]}")
    page = await open_console(browser, cloud, cloud.admin)
    try:
        for name in NAMES:
            await page.wait_for_selector(f"#node-table tr[data-node='{name}']")
        assert await page.inner_text(".card.Ready .n") == str(NODES)
        assert "admin" in await page.inner_text("#who")
        token_in_url = cloud.admin.split(".")[0]
        assert token_in_url not in page.url
        await shot(page, "fleet")
        # the node page, and the very answer its plot was drawn from
        async with page.expect_response(
                lambda r: r.url.endswith(f"/console/api/nodes/{NAMES[0]}/telemetry")) as got:
            await page.click(f"#node-table a:text-is('{NAMES[0]}')")
        t = await (await got.value).json()
        await page.wait_for_selector("#node-status .state-Ready")
        assert await page.inner_text("#node-name") == NAMES[0]
        await page.wait_for_selector(".live.on")
        # the agent reports its real capacity: the host's, as a real agent does
        assert "cpu" in await page.inner_text("#node-status")
        now = time.time()
        assert t["points"] and all(now - 600 < p[0] <= now for p in t["points"])
        fc = t["forecast"]
        assert 0.0 <= fc["cpu_p50"] <= fc["cpu_p90"] <= 1.0
        # the newest minute is a visible dot even when it is the only one (a polyline of
        # one point has no length: a fresh node showed no actuals at all)
        await page.wait_for_selector("svg.plot[data-resource=cpu] circle.newest")
        assert float(await page.get_attribute("svg.plot[data-resource=cpu] circle.newest",
                                              "data-value")) == pytest.approx(t["points"][-1][1])
        assert await page.get_attribute("svg.plot[data-resource=cpu] polyline.actual",
                                        "data-points") == str(len(t["points"]))
        assert float(await page.get_attribute("svg.plot[data-resource=cpu] rect.band",
                                              "data-p90")) == pytest.approx(fc["cpu_p90"])
        assert float(await page.get_attribute("svg.plot[data-resource=mem] line.p50",
                                              "data-p50")) == pytest.approx(fc["mem_p50"])
        caption = await page.inner_text("#node-plots figure:first-child figcaption")
        pct = f"p90 {round(fc['cpu_p90'] * 100)} %"
        assert caption.startswith("cpu: now ") and pct in caption, caption
        await shot(page, "node")
        assert not page.errors, page.errors
    finally:
        await page.close()


async def test_a_daemonset_applied_with_fedctl_rolls_out_in_the_page_without_reload(
        browser: Any, cloud: Cloud) -> None:
    fleet = cloud.fleet
    page = await open_console(browser, cloud, await cloud.token("operator"), "#/workloads")
    try:
        await page.wait_for_selector("h1 .live.on")
        # what the page shows for the probe, each time it changes (the table is redrawn
        # from the watch stream; the page is never reloaded)
        await page.evaluate("""() => {
            window.__sameDocument = true;
            window.__seen = [];
            const box = document.getElementById('daemonsets');
            const record = () => {
                const row = box.querySelector("tr[data-workload='default/probe']");
                if (!row) return;
                const col = (c) => row.querySelector(`[data-col=${c}]`).textContent;
                const now = [col('phase'), col('updated'), col('ready'), col('available')];
                const last = window.__seen[window.__seen.length - 1];
                if (!last || last.join() !== now.join()) window.__seen.push(now);
            };
            new MutationObserver(record).observe(box, {childList: true, subtree: true});
        }""")
        out = await _in_thread(apply_probe, fleet, ticker("v1"))
        assert re.search(r"\bprobe created\b", out), out
        await page.wait_for_selector(f"{ROW} [data-col=available]:text-is('{NODES}')",
                                     timeout=60_000)
        await page.wait_for_selector(f"{ROW} [data-col=phase]:text-is('Complete')",
                                     timeout=30_000)
        v1 = await _in_thread(fleet.wait, lambda: probe_pods_running(fleet, "v1"),
                              timeout=30, what="the v1 pods Running and Ready")
        assert len(v1) == NODES
        # a new template rolls one node at a time (maxUnavailable 1): seen as it moves
        await page.evaluate("() => { window.__seen = []; }")
        out = await _in_thread(apply_probe, fleet, ticker("v2"))
        assert re.search(r"\bprobe configured\b", out), out
        # (from the page's own record: the rollout may be over before fedctl returns)
        await page.wait_for_function("() => window.__seen.some(s => s[0] === 'Progressing')",
                                     timeout=30_000)
        await shot(page, "workloads")
        await _in_thread(fleet.wait, lambda: probe_pods_running(fleet, "v2"), timeout=90,
                         what="the v2 pods Running and Ready on every node")
        await page.wait_for_selector(f"{ROW} [data-col=phase]:text-is('Complete')",
                                     timeout=30_000)
        await page.wait_for_selector(f"{ROW} [data-col=updated]:text-is('{NODES}')",
                                     timeout=30_000)
        await page.wait_for_selector(f"{ROW} [data-col=available]:text-is('{NODES}')",
                                     timeout=30_000)
        seen = await page.evaluate("() => window.__seen")
        phases = [s[0] for s in seen]
        assert "Progressing" in phases and phases[-1] == "Complete", seen
        # it moved in steps: the page showed the rollout part way (fewer than every
        # pod updated, or fewer available) before it showed it done
        assert any(s[0] == "Progressing" and (s[1] != str(NODES) or s[3] != str(NODES))
                   for s in seen), seen
        assert await page.evaluate("() => window.__sameDocument") is True  # never reloaded
        # the workload's events say how the rollout went
        await page.click(f"{ROW} a")
        await page.wait_for_selector("#workload-events td:text-is('RolloutComplete')",
                                     timeout=15_000)
        # rollout progress in /metrics, without names
        text = (await cloud.call("GET", "/metrics")).text
        assert 'cloudcore_rollouts{kind="DaemonSet",phase="Complete"} 1.0' in text
        assert f'cloudcore_rollout_pods{{kind="DaemonSet",state="updated"}} {float(NODES)}' in text
        assert "probe" not in text
        # a template whose containers really crash, behind a health gate (Ready for 10 s,
        # Kubernetes' minReadySeconds; with 0 a container that starts, then exits, is
        # Ready for an instant and passes): the rollout fails on the first node, rolls
        # back everywhere, and says why
        await _in_thread(apply_probe, fleet, "echo crashing; exit 3", min_ready=10)
        await page.wait_for_selector(f"{ROW} [data-col=phase]:text-is('RolledBack')",
                                     timeout=90_000)
        assert "1 failed" in await page.inner_text(f"{ROW} [data-col=failed]")
        await page.wait_for_selector("#workload-events td:text-is('RolloutAborted')",
                                     timeout=15_000)
        events = await page.inner_text("#workload-events")
        assert re.search(r"CrashLoopBackOff|Error|exit", events), events
        await shot(page, "rollback")
        # and the nodes run the stable (v2) template again
        await _in_thread(fleet.wait, lambda: probe_pods_running(fleet, "v2"), timeout=90,
                         what="the v2 pods Running again after the rollback")
        # operators get the rollout buttons, and they work
        await page.click(f"{ROW} button[data-action=pause]")
        await page.wait_for_selector(f"{ROW} button[data-action=resume]", timeout=10_000)
        obj = (await cloud.call("GET", "/api/v1/daemonsets/default/probe")).json()
        assert obj["spec"]["paused"] is True
        await page.click(f"{ROW} button[data-action=resume]")
        await page.wait_for_selector(f"{ROW} button[data-action=pause]", timeout=10_000)
        assert not page.errors, page.errors
    finally:
        await page.close()


async def test_an_operator_follows_a_real_pods_log_and_runs_exec(browser: Any,
                                                                 cloud: Cloud) -> None:
    pod = await _in_thread(ensure_probe, cloud.fleet)
    page = await open_console(browser, cloud, await cloud.token("operator"),
                              f"#/pods/default/{pod}")
    try:
        await page.wait_for_selector("#show-logs")
        await page.click("#show-logs")  # follow is on by default
        await page.wait_for_selector("#log:has-text('tick')", timeout=15_000)
        first = _ticks(await page.inner_text("#log"))
        assert first, "no numbered line in the log"
        # the container goes on logging a line a second: followed, the newer lines
        # arrive in the same view
        await page.wait_for_function(
            """n => [...document.getElementById('log').textContent.matchAll(/tick (\\d+)/g)]
                    .some(m => +m[1] >= n)""", arg=max(first) + 3, timeout=15_000)
        later = _ticks(await page.inner_text("#log"))
        assert max(later) >= max(first) + 3 and later == sorted(later), later
        await page.fill("#exec-command", "false")
        await page.click("#exec")
        await page.wait_for_selector("#exec-output:has-text('exit code 1')", timeout=20_000)
        await page.fill("#exec-command", "cat /proc/1/cmdline")
        await page.click("#exec")
        await page.wait_for_selector("#exec-output:has-text('exit code 0')", timeout=20_000)
        assert "tick" in await page.inner_text("#exec-output")  # the pod's own process
        await shot(page, "logs")
        assert not page.errors, page.errors
    finally:
        await page.close()


def _ticks(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"tick (\d+)", text)]


async def test_read_only_sees_no_exec_or_rollout_buttons_and_gets_403(browser: Any,
                                                                  cloud: Cloud) -> None:
    pod = await _in_thread(ensure_probe, cloud.fleet)
    page = await open_console(browser, cloud, await cloud.token("read-only"),
                              f"#/pods/default/{pod}")
    try:
        await page.wait_for_selector("#ops-note")
        await page.wait_for_selector("#pod-status a:text-is('edge-1')")
        assert await page.query_selector("#exec") is None
        assert await page.query_selector("#show-logs") is None
        await shot(page, "pod")
        for method, path, body in (("POST", "exec", {"command": ["id"]}),
                                   ("GET", "log?tail=5", None)):
            status = await page.evaluate("""async ([method, url, body]) => {
                const r = await fetch(url, {method, body: body && JSON.stringify(body),
                    headers: {'Content-Type': 'application/json', 'Authorization':
                              'Bearer ' + sessionStorage.getItem('edgefed.console.token')}});
                return [r.status, (await r.json()).reason];
            }""", [method, f"/api/v1/pods/default/{pod}/{path}", body])
            assert status == [403, "Forbidden"], (path, status)
        await page.evaluate("r => { location.hash = r; }", "#/workloads")
        await page.wait_for_selector("h1 .live.on")
        await page.wait_for_selector(ROW)
        assert await page.query_selector("button[data-action]") is None
        assert not page.errors, page.errors
    finally:
        await page.close()


async def test_a_node_label_with_script_is_shown_as_text(browser: Any, cloud: Cloud) -> None:
    node = NAMES[-1]
    r = await cloud.call("PATCH", f"/api/v1/nodes/{node}",
                         json={"metadata": {"labels": {"note": EVIL}}})
    assert r.status_code == 200, r.text
    page = await open_console(browser, cloud, cloud.admin, f"#/nodes/{node}")
    try:
        await page.wait_for_selector("#node-labels .chip")
        labels = await page.inner_text("#node-labels")
        assert f"note={EVIL}" in labels
        assert await page.evaluate("() => window.__pwned") is None
        assert await page.query_selector("#view img") is None
        assert await page.query_selector("#view script") is None
        await page.evaluate("r => { location.hash = r; }", "#/")
        await page.wait_for_selector(f"#node-table tr[data-node='{node}']")
        assert EVIL in await page.inner_text(f"#node-table tr[data-node='{node}']")
        assert await page.evaluate("() => window.__pwned") is None
        assert not page.errors, page.errors
    finally:
        await page.close()
        await cloud.call("PATCH", f"/api/v1/nodes/{node}",
                         json={"metadata": {"labels": {"note": None}}})


async def test_signing_out_forgets_the_token_and_a_bad_token_is_refused(browser: Any,
                                                                  cloud: Cloud) -> None:
    page = await open_console(browser, cloud, cloud.admin)
    try:
        await page.click("#signout")
        await page.wait_for_selector("#signin:not([hidden])")
        assert await page.evaluate("() => sessionStorage.length") == 0
        await page.fill("#token", "nope.nope")
        await page.click("#signin-form button[type=submit]")
        await page.wait_for_selector("#signin-error:text('refused')")
        started = time.monotonic()
        await page.reload()
        await page.wait_for_selector("#signin:not([hidden])")
        assert time.monotonic() - started < 10
    finally:
        await page.close()


async def _in_thread(fn: Any, *args: Any, **kw: Any) -> Any:
    """A blocking call (fedctl as a process, the fleet's polling) off the test's loop,
    so the browser's connection keeps being served meanwhile."""
    return await asyncio.to_thread(fn, *args, **kw)


@pytest.fixture
def insecure_cloud(tmp_path: Path) -> Iterator[str]:
    """An in-process API with auth off, as `cloudcore --insecure` serves it (LMDB store,
    no broker: only the sign-in path is looked at here); its URL."""
    import socket
    import threading

    import uvicorn

    from cloudcore.api import create_app
    from cloudcore.auth import Auth
    from cloudcore.config import StoreSettings
    from cloudcore.fleet import Fleet as CloudFleet
    from cloudcore.fleet import Liveness
    from cloudcore.metrics import Metrics
    from cloudcore.scheduler import Scheduler
    from cloudcore.store import Store

    ready, box = threading.Event(), {}

    def run() -> None:
        async def main() -> None:
            async with Store(StoreSettings(state_dir=tmp_path / "s")) as store:
                writer = asyncio.create_task(store.run())
                fleet = CloudFleet(store=store, scheduler=Scheduler(),
                                   liveness=Liveness(default_heartbeat=30, missed=3, now=0))
                app = create_app(fleet, metrics=Metrics(process=False), flush=store.flush,
                                 auth=Auth(store=store, enabled=False))
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                server = uvicorn.Server(uvicorn.Config(app, lifespan="off",
                                                       log_level="warning"))
                box.update(server=server, fleet=fleet, loop=asyncio.get_running_loop(),
                           url=f"http://127.0.0.1:{sock.getsockname()[1]}")
                serving = asyncio.create_task(server.serve(sockets=[sock]))
                while not server.started:
                    await asyncio.sleep(0.01)
                ready.set()
                await serving
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
                sock.close()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True, name="console-insecure-api")
    thread.start()
    assert ready.wait(15), "the in-process API did not start"
    try:
        yield str(box["url"])
    finally:
        box["loop"].call_soon_threadsafe(box["fleet"].watches.close)
        box["server"].should_exit = True
        thread.join(10)


async def test_an_insecure_cloudcore_opens_without_sign_in(browser: Any,
                                                           insecure_cloud: str) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(insecure_cloud + "/console/#/workloads")
        await page.wait_for_selector("h1 .live.on")
        assert "anonymous" in await page.inner_text("#who")
        assert await page.is_hidden("#signin")
        assert not errors, errors
    finally:
        await page.close()


async def test_a_cloudcore_that_does_not_answer_gets_the_sign_in_form_and_why(
        browser: Any, insecure_cloud: str) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    try:
        await page.route("**/api/v1/whoami", lambda route: route.abort())
        await page.goto(insecure_cloud + "/console/")
        await page.wait_for_selector("#signin:not([hidden])", timeout=10_000)
        assert "did not answer" in await page.inner_text("#signin-error")
        # once it answers, signing in opens the console
        await page.unroute("**/api/v1/whoami")
        await page.fill("#token", "anything")  # auth off: any token is the anonymous admin
        await page.click("#signin-form button[type=submit]")
        await page.wait_for_selector("#who:has-text('anonymous')")
    finally:
        await page.close()
