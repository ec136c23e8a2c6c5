"""The console in a real headless Chromium against a real secure cloudcore.

One fleet for the module: mosquitto with TLS and the password file, `cloudcore` as a
process (HTTPS, tokens), and three simulated nodes (`testbed.simulator`: real MQTT
sessions speaking the sealed protocol, reporting applied pods Running), so rollouts
move as on a real fleet without containers. Chromium is Debian's (`/usr/bin/chromium`,
installed by `make test`), driven by Playwright; no browser is ever downloaded. The
page trusts the fleet CA only through `ignore_https_errors` (the test's browser has no
CA store of ours); everything else is what an operator's browser does.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cloudcore.api import create_app
from cloudcore.auth import Auth
from cloudcore.config import StoreSettings
from cloudcore.fleet import Fleet as CloudFleet
from cloudcore.fleet import Liveness
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store
from cloudcore.synchub.requests import Requests
from shared.codec import Response
from testbed.fleet import Fleet, FleetSettings
from testbed.procs import Proc

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
NODES = 3
EVIL = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
DOCS = Path(__file__).resolve().parents[2] / "docs"

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (make test installs it)",
                allow_module_level=True)
async_api = pytest.importorskip("playwright.async_api",
                                reason="playwright is missing: pip install -e '.[dev]'")


class Cloud:
    """The fleet's API as the admin, and tokens of other roles."""

    def __init__(self, fleet: Fleet) -> None:
        assert fleet.ca_file is not None and fleet.admin_token
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
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is missing (make test installs it)")
    work = tmp_path_factory.mktemp("console")
    f = Fleet(FleetSettings(nodes=0, workdir=work, with_registry=False, use_netns=False,
                            heartbeat_s=2.0))
    f.start()
    sim = None
    try:
        assert f.broker is not None
        names = [f"site-{i}" for i in range(NODES)]
        secure = f.simulator_args(names, keys_file=work / "keys.json")
        sim = Proc("simulator", [sys.executable, "-m", "testbed.simulator",
                                 "--host", "127.0.0.1", "--port", str(f.broker.port),
                                 "--prefix", "site", "--start", "0", "--count", str(NODES),
                                 "--heartbeat", "2", "--report-pods",
                                 "--crash-marker", "crash-now", *secure],
                   log=work / "sim.log").start()
        f.wait(lambda: sum(n["status"]["ready"] == "Ready" for n in f.nodes()) == NODES,
               timeout=30, what="simulated nodes Ready")
        yield f
    finally:
        if sim is not None:
            sim.stop()
        f.stop()


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
    await page.goto(cloud.url + "/", wait_until="domcontentloaded")
    assert page.url.endswith("/console/"), page.url  # / redirects to the console
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


async def test_sign_in_see_the_nodes_and_open_one(browser: Any, cloud: Cloud) -> None:
    page = await open_console(browser, cloud, cloud.admin)
    try:
        await page.wait_for_selector("#node-table tr[data-node='site-0']")
        ready = await page.inner_text(".card.Ready .n")
        assert ready == str(NODES)
        assert "admin" in await page.inner_text("#who")
        token_in_url = cloud.admin.split(".")[0]
        assert token_in_url not in page.url
        await shot(page, "fleet")
        await page.click("#node-table a:text-is('site-1')")
        await page.wait_for_selector("#node-status .state-Ready")
        assert await page.inner_text("#node-name") == "site-1"
        await page.wait_for_selector(".live.on")
        await shot(page, "node")
        assert not page.errors, page.errors
    finally:
        await page.close()


async def test_a_daemonset_rollout_moves_in_the_page_without_reload(browser: Any,
                                                              cloud: Cloud) -> None:
    page = await open_console(browser, cloud, await cloud.token("operator"), "#/workloads")
    try:
        await page.wait_for_selector("h1 .live.on")
        await page.evaluate("() => { window.__sameDocument = true; }")
        ds = {"apiVersion": "apps/v1", "kind": "DaemonSet",
              "metadata": {"name": "probe", "namespace": "default"},
              "spec": {"selector": {"matchLabels": {"app": "probe"}},
                       "updateStrategy": {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxUnavailable": 1}},
                       "template": {"metadata": {"labels": {"app": "probe"}},
                                    "spec": {"containers": [{"name": "c", "image": "busybox",
                                                             "args": ["sleep", "v1"]}]}}}}
        r = await cloud.call("POST", "/api/v1/apply", json={"documents": [ds]})
        assert r.status_code == 200, r.text
        row = "tr[data-workload='default/probe']"
        await page.wait_for_selector(f"{row} [data-col=available]:text-is('{NODES}')",
                                     timeout=20_000)
        # a new template rolls one node at a time (maxUnavailable 1): seen as it moves
        ds["spec"]["template"]["spec"]["containers"][0]["args"] = ["sleep", "v2"]
        r = await cloud.call("POST", "/api/v1/apply", json={"documents": [ds]})
        assert r.status_code == 200, r.text
        await page.wait_for_selector(f"{row} [data-col=phase]:text-is('Progressing')",
                                     timeout=10_000)
        await shot(page, "workloads")
        await page.wait_for_selector(f"{row} [data-col=phase]:text-is('Complete')", timeout=30_000)
        assert await page.evaluate("() => window.__sameDocument") is True  # never reloaded
        # the workload's events say how the rollout went
        await page.click(f"{row} a")
        await page.wait_for_selector("#workload-events td:text-is('RolloutComplete')",
                                     timeout=10_000)
        # rollout progress in /metrics, without names
        text = (await cloud.call("GET", "/metrics")).text
        assert 'cloudcore_rollouts{kind="DaemonSet",phase="Complete"} 1.0' in text
        assert f'cloudcore_rollout_pods{{kind="DaemonSet",state="updated"}} {float(NODES)}' in text
        assert "probe" not in text
        # a template whose pods crash: the rollout fails, rolls back, and says why
        ds["spec"]["template"]["spec"]["containers"][0]["args"] = ["crash-now"]
        r = await cloud.call("POST", "/api/v1/apply", json={"documents": [ds]})
        assert r.status_code == 200, r.text
        await page.wait_for_selector(f"{row} [data-col=phase]:text-is('RolledBack')",
                                     timeout=20_000)
        assert "1 failed" in await page.inner_text(f"{row} [data-col=failed]")
        await page.wait_for_selector("#workload-events td:text-is('RolloutAborted')",
                                     timeout=10_000)
        assert "CrashLoopBackOff" in await page.inner_text("#workload-events")
        await shot(page, "rollback")
        # operators get the rollout buttons, and they work
        await page.click(f"{row} button[data-action=pause]")
        await page.wait_for_selector(f"{row} button[data-action=resume]", timeout=10_000)
        obj = (await cloud.call("GET", "/api/v1/daemonsets/default/probe")).json()
        assert obj["spec"]["paused"] is True
        await page.click(f"{row} button[data-action=resume]")
        await page.wait_for_selector(f"{row} button[data-action=pause]", timeout=10_000)
        assert not page.errors, page.errors
    finally:
        await page.close()


async def test_read_only_sees_no_exec_or_rollout_buttons_and_gets_403(browser: Any,
                                                                  cloud: Cloud) -> None:
    pod = await cloud.call("GET", "/api/v1/pods/default/probe-site-0")
    if pod.status_code == 404:  # alone: a pod of its own
        doc = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "probe-site-0", "namespace": "default"},
               "spec": {"nodeName": "site-0",
                        "containers": [{"name": "c", "image": "busybox"}]}}
        r = await cloud.call("POST", "/api/v1/apply", json={"documents": [doc]})
        assert r.status_code == 200, r.text
    page = await open_console(browser, cloud, await cloud.token("read-only"),
                              "#/pods/default/probe-site-0")
    try:
        await page.wait_for_selector("#ops-note")
        assert await page.query_selector("#exec") is None
        assert await page.query_selector("#show-logs") is None
        await shot(page, "pod")
        status = await page.evaluate("""async () => {
            const r = await fetch('/api/v1/pods/default/probe-site-0/exec', {
                method: 'POST',
                headers: {'Content-Type': 'application/json', 'Authorization':
                          'Bearer ' + sessionStorage.getItem('edgefed.console.token')},
                body: JSON.stringify({command: ['id']})});
            return [r.status, (await r.json()).reason];
        }""")
        assert status == [403, "Forbidden"]
        await page.evaluate("r => { location.hash = r; }", "#/workloads")
        await page.wait_for_selector("h1 .live.on")
        await page.wait_for_timeout(300)
        assert await page.query_selector("button[data-action]") is None
        assert not page.errors, page.errors
    finally:
        await page.close()


async def test_a_node_label_with_script_is_shown_as_text(browser: Any, cloud: Cloud) -> None:
    r = await cloud.call("PATCH", "/api/v1/nodes/site-2",
                         json={"metadata": {"labels": {"note": EVIL}}})
    assert r.status_code == 200, r.text
    page = await open_console(browser, cloud, cloud.admin, "#/nodes/site-2")
    try:
        await page.wait_for_selector("#node-labels .chip")
        labels = await page.inner_text("#node-labels")
        assert f"note={EVIL}" in labels
        assert await page.evaluate("() => window.__pwned") is None
        assert await page.query_selector("#view img") is None
        assert await page.query_selector("#view script") is None
        await page.evaluate("r => { location.hash = r; }", "#/")
        await page.wait_for_selector("#node-table tr[data-node='site-2']")
        assert EVIL in await page.inner_text("#node-table tr[data-node='site-2']")
        assert await page.evaluate("() => window.__pwned") is None
        assert not page.errors, page.errors
    finally:
        await page.close()
        await cloud.call("PATCH", "/api/v1/nodes/site-2",
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


@pytest.fixture
def local_cloud(tmp_path: Path) -> Iterator[Any]:
    """An in-process API (LMDB store, no broker, auth off as with --insecure) whose fleet
    the test can feed telemetry and forecasts, which the simulator does not send."""
    ready, box = threading.Event(), {}

    def run() -> None:
        async def main() -> None:
            async with Store(StoreSettings(state_dir=tmp_path / "s",
                                           batch_interval=0.005)) as store:
                writer = asyncio.create_task(store.run())
                fleet = CloudFleet(store=store, scheduler=Scheduler(),
                              liveness=Liveness(default_heartbeat=30, missed=3, now=0))
                requests = Requests(lambda node, req: scripted_node(requests, node, req))
                app = create_app(fleet, metrics=Metrics(process=False), flush=store.flush,
                                 auth=Auth(store=store, enabled=False), requests=requests)
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

    thread = threading.Thread(target=run, daemon=True, name="console-local-api")
    thread.start()
    assert ready.wait(15), "the in-process API did not start"
    try:
        yield box
    finally:
        box["loop"].call_soon_threadsafe(box["fleet"].watches.close)
        box["server"].should_exit = True
        thread.join(10)


def scripted_node(requests: Requests, node: str, req: Any) -> None:
    """The edge's side of logs and exec, scripted (the cloud's side is the real one):
    a log of 3 lines, then with `follow` a line every 0.3 s; exec echoes its argv."""
    loop = asyncio.get_running_loop()

    def answer(seq: int, data: bytes, **kw: Any) -> None:
        requests.deliver(node, Response(node=node, id=req.id, seq=seq, data=data, **kw))

    if req.kind == "logs":
        answer(0, b"line 1\nline 2 <b>not bold</b>\nline 3\n")
        if not req.follow:
            loop.call_soon(lambda: answer(1, b"", done=True))
            return
        for i in range(1, 20):
            loop.call_later(0.3 * i, answer, i, f"followed {i}\n".encode())
    elif req.kind == "exec":
        answer(0, " ".join(req.argv).encode() + b"\n")
        loop.call_soon(lambda: answer(1, b"", done=True, exit_code=0))


def _feed(fleet: CloudFleet, name: str) -> None:
    """A node with an hour of one-minute telemetry and a forecast (in the API's loop)."""
    fleet.join_node(name, labels={"edgefed.io/site": "lyon"}, arch="arm64")
    node = fleet.nodes[name]
    node.status.allocatable = {"cpu": 4000, "memory": 8 << 30}
    now = int(time.time()) // 60 * 60
    fleet.add_telemetry(name, [{"ts": now - 60 * (60 - i),
                                "node": {"cpu": 0.2 + 0.1 * (i % 5) / 4, "mem": 2 << 30}}
                               for i in range(60)])
    fleet.apply_forecasts({name: {"cpu_p50": 0.4, "cpu_p90": 0.55, "mem_p50": 0.25,
                                  "mem_p90": 0.3, "trusted": 1.0}})


async def test_a_node_shows_its_telemetry_and_forecast_plot(browser: Any,
                                                            local_cloud: Any) -> None:
    fut = asyncio.run_coroutine_threadsafe(_call(_feed, local_cloud["fleet"], "shop-7"),
                                           local_cloud["loop"])
    await asyncio.wrap_future(fut)
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        # auth off (--insecure): the console opens without a sign-in
        await page.goto(local_cloud["url"] + "/console/#/nodes/shop-7")
        await page.wait_for_selector("svg.plot[data-resource=cpu] polyline.actual")
        assert await page.get_attribute("svg.plot[data-resource=cpu] polyline.actual",
                                        "data-points") == "60"
        assert await page.get_attribute("svg.plot[data-resource=cpu] rect.band",
                                        "data-p90") == "0.55"
        assert await page.get_attribute("svg.plot[data-resource=mem] line.p50",
                                        "data-p50") == "0.25"
        caption = await page.inner_text("#node-plots figure:first-child figcaption")
        assert "p50 40 %" in caption and "p90 55 %" in caption
        assert "anonymous" in await page.inner_text("#who")
        await shot(page, "forecast")
        assert not errors, errors
    finally:
        await page.close()


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


def _pod(fleet: CloudFleet, node: str) -> None:
    from shared.models import parse_object

    fleet.join_node(node, labels={}, arch="amd64")
    fleet.apply([parse_object({"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": "web", "namespace": "default"},
                               "spec": {"nodeName": node,
                                        "containers": [{"name": "c", "image": "busybox"}]}})])


async def test_an_operator_follows_a_log_and_runs_exec(browser: Any, local_cloud: Any) -> None:
    fut = asyncio.run_coroutine_threadsafe(_call(_pod, local_cloud["fleet"], "shop-8"),
                                           local_cloud["loop"])
    await asyncio.wrap_future(fut)
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(local_cloud["url"] + "/console/#/pods/default/web")
        await page.wait_for_selector("#show-logs")  # anonymous admin: an operator
        await page.click("#show-logs")
        await page.wait_for_selector("#log:has-text('line 3')")
        first = await page.inner_text("#log")
        assert "line 2 <b>not bold</b>" in first  # text, not markup
        await page.wait_for_selector("#log:has-text('followed 3')", timeout=10_000)
        assert await page.query_selector("#log b") is None
        await page.fill("#exec-command", "echo hi there")
        await page.click("#exec")
        await page.wait_for_selector("#exec-output:has-text('exit code 0')")
        assert "echo hi there" in await page.inner_text("#exec-output")
        await shot(page, "logs")
        assert not errors, errors
    finally:
        await page.close()
