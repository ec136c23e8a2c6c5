"""Issue 17: pod metrics scraped on the device reach Prometheus through cloudcore.

A real fleet (mosquitto, cloudcore, one agent in its network namespace, real crun): a
busybox pod annotated `prometheus.io/scrape` serves a metrics file its command wrote
(`httpd -f`); the agent scrapes it over the pod network, sends the batch over MQTT, and
the series appears at cloudcore's `/metrics/edge` with node, namespace and pod labels,
beside the agent's own metrics. A second pod serves garbage: it is refused and counted,
and the agent goes on."""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_fleet import real_fleet
from prometheus_client.parser import text_string_to_metric_families

from testbed.fleet import Fleet, FleetSettings

pytestmark = pytest.mark.integration

METRICS = ("# HELP edge_demo_requests_total Requests served.\\n"
           "# TYPE edge_demo_requests_total counter\\n"
           'edge_demo_requests_total{path=\\"/\\"} 42\\n'
           "# TYPE edge_demo_temp_celsius gauge\\n"
           "edge_demo_temp_celsius 21.5\\n")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with real_fleet(FleetSettings(nodes=1, workdir=tmp_path_factory.mktemp("fleet"),
                                  heartbeat_s=1.0,
                                  agent_args=("--scrape-interval", "2"))) as f:
        yield f


def pod(name: str, image: str, body: str, *, port: int) -> dict[str, Any]:
    script = (f'mkdir -p /tmp/www && printf "{body}" > /tmp/www/metrics '
              f"&& exec httpd -f -p {port} -h /tmp/www")
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                "prometheus.io/path": "/metrics"}},
            "spec": {"nodeName": "edge-1", "containers": [{
                "name": "web", "image": image, "command": ["sh", "-c", script],
                "resources": {"limits": {"memory": "16Mi"}}}]}}


def edge_samples(fleet: Fleet) -> dict[str, list[Any]]:
    """`/metrics/edge` parsed as Prometheus would: family -> samples."""
    with fleet.urlopen("/metrics/edge") as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_pod_metrics_reach_cloudcore_with_node_and_pod_labels(fleet: Fleet) -> None:
    fleet.apply([pod("scraped", fleet.image, METRICS, port=9102),
                 pod("garbled", fleet.image, "<html>not metrics</html>\\n", port=9103)])
    found: dict[str, list[Any]] = {}

    def arrived() -> bool:
        nonlocal found
        found = edge_samples(fleet)
        up = {s.labels.get("pod"): s.value for s in found.get("edgecore_pod_scrape_up", [])}
        return "edge_demo_requests" in found and up.get("garbled") == 0.0

    try:
        fleet.wait(arrived, timeout=120, what="the pod's series at /metrics/edge")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; pods {[p['status'] for p in fleet.pods()]}; "
                             f"families {sorted(found)}") from None
    (req,) = found["edge_demo_requests"]
    assert req.name == "edge_demo_requests_total" and req.value == 42
    assert req.labels == {"node": "edge-1", "namespace": "default", "pod": "scraped",
                          "path": "/"}
    (temp,) = found["edge_demo_temp_celsius"]
    assert temp.value == 21.5 and temp.labels["pod"] == "scraped"
    # the agent's own metrics, labelled with its node
    (rss,) = found["edgecore_process_resident_memory_bytes"]
    assert rss.labels == {"node": "edge-1"} and rss.value > 1 << 20
    up = {s.labels["pod"]: s.value for s in found["edgecore_pod_scrape_up"]}
    assert up == {"scraped": 1.0, "garbled": 0.0}
    parse_failures = [s.value for s in found["edgecore_scrape_failures"]
                      if s.labels["reason"] == "parse"]
    assert parse_failures and parse_failures[0] >= 1
    assert fleet.agents[0].proc.alive()
    # it names nodes and pods: no token, no series
    with pytest.raises(urllib.error.HTTPError) as err:
        fleet.urlopen("/metrics/edge", token="")
    assert err.value.code == 401
    # and cloudcore's own /metrics says what it holds
    with fleet.urlopen("/metrics", token="") as r:
        own = r.read().decode()
    assert 'cloudcore_edge_metrics_batches{result="accepted"}' in own
