"""`testbed`: run a local edgefed fleet, the demo, and the benchmarks.

    testbed up --nodes 3          start everything, print how to reach it, Ctrl-C stops
    testbed demo                  up + apply examples/ + wait for convergence + fetch a page
    testbed broker --state-dir S  the secure mosquitto alone, for a cloudcore run by hand

  Both are secure by default: a TLS broker with no anonymous clients and per-node ACLs,
  cloudcore over HTTPS with a token, agents that join with one-use tokens; fedctl gets
  server, token and CA from WORKDIR/fedctl.yaml (export FEDCTL_CONFIG=...). --insecure
  is the old open fleet, for comparison only.

    testbed bench sync --nodes N  simulated fleet: time for a DaemonSet to be acked by all,
                                  secure (joined, TLS, sealed) and --insecure side by side
    testbed bench rollout         simulated fleet: health-gated DaemonSet rollouts, a good
                                  update in batches (--batch 10%) and a bad one rolled back
    testbed bench idle            two real agents at their defaults (0 and --pods 10 pods):
                                  idle link bytes per node by packet capture (--duration)
    testbed chaos SCENARIO        start a fleet, inject a named fault, print figures:
                                  partition --minutes 10, flaky, broker-restart, cloud-kill,
                                  agent-kill, offline-reboot --pods 20; `outbox` needs no fleet
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fedctl.render import pod_up_to_date
from testbed.fleet import Fleet, FleetSettings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _wait_for_stop(duration: float | None) -> None:
    """Sleep until Ctrl-C / SIGTERM, or for `duration` seconds when given."""
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    deadline = None if duration is None else time.monotonic() + duration
    while not stop and (deadline is None or time.monotonic() < deadline):
        time.sleep(0.2)


def _print_fleet(fleet: Fleet) -> None:
    assert fleet.broker is not None
    b = fleet.broker
    print(f"  cloudcore API   {fleet.api}")
    print(f"  console         {fleet.api}/console/"
          + (f"   (the browser will not know the fleet CA; sign in with the admin token "
             f"{fleet.admin_token}, from {fleet.cloud_state / 'admin.token'})"
             if fleet.admin_token else "   (insecure: no sign-in)"))
    print(f"  mosquitto       {'mqtts' if b.tls else 'mqtt'}://{b.host}:{b.port}"
          + ("   (TLS, no anonymous clients, per-node ACL)" if b.tls else "   (ANONYMOUS)"))
    if b.cert_port:
        print(f"                  mqtts://{b.host}:{b.cert_port}   (client certificates)")
    if fleet.ca_file is not None and fleet.secure:
        print(f"  fleet CA        {fleet.ca_file}")
    if fleet.registry is not None:
        print(f"  registry        {fleet.registry.address}   image {fleet.image}")
    for a in fleet.agents:
        where = f"netns {a.host.name}" if a.host else "host network"
        print(f"  {a.name:<14}  {a.address:<15} {where}   state {a.state_dir}")
    print(f"  logs            {fleet.workdir / 'logs'}   broker: {b.log}")
    print(f"  fedctl          export FEDCTL_CONFIG={fleet.context_file}"
          + ("   (server, admin token and CA)" if fleet.secure else ""))
    print("                  .venv/bin/fedctl get nodes")


def _settings(args: argparse.Namespace) -> FleetSettings:
    return FleetSettings(nodes=args.nodes, workdir=Path(args.workdir),
                         heartbeat_s=args.heartbeat,
                         use_netns=False if args.no_netns else None,
                         insecure=args.insecure, node_certs=args.node_certs)


def cmd_up(args: argparse.Namespace) -> int:
    fleet = Fleet(_settings(args))
    print(f"starting a fleet of {args.nodes} edge agents ...", flush=True)
    with fleet:
        fleet.wait_nodes_ready(timeout=60)
        print("fleet is up:")
        _print_fleet(fleet)
        print("Ctrl-C stops everything.", flush=True)
        _wait_for_stop(None)
        print("stopping ...", flush=True)
    return 0


def _fedctl(fleet: Fleet, *argv: str, stdin: str | None = None) -> str:
    return fleet.fedctl(*argv, stdin=stdin).stdout


def example_documents(image: str) -> str:
    """The examples/ manifests with ${IMAGE} set to the testbed registry's busybox."""
    texts = [p.read_text().replace("${IMAGE}", image) for p in sorted(EXAMPLES.glob("*.yaml"))]
    return "\n---\n".join(texts)


def expected_pods(docs: str, nodes: int) -> int:
    n = 0
    for d in yaml.safe_load_all(docs):
        if not d:
            continue
        n += nodes if d["kind"] == "DaemonSet" else d["spec"].get("replicas", 1)
    return n


def cmd_demo(args: argparse.Namespace) -> int:
    duration_env = os.environ.get("DEMO_DURATION", "")
    duration = float(duration_env) if duration_env else None
    fleet = Fleet(_settings(args))
    t0 = time.monotonic()
    print(f"== starting mosquitto, a registry, cloudcore and {args.nodes} edge agents", flush=True)
    try:
        with fleet:
            fleet.wait_nodes_ready(timeout=90)
            _print_fleet(fleet)
            print(f"== nodes Ready after {time.monotonic() - t0:.1f} s", flush=True)
            print(_fedctl(fleet, "get", "nodes"), flush=True)
            docs = example_documents(fleet.image)
            print("== fedctl apply -f examples/", flush=True)
            print(_fedctl(fleet, "apply", "-f", "-", stdin=docs), flush=True)
            want = expected_pods(docs, args.nodes)
            t1 = time.monotonic()

            rollouts: dict[str, str] = {}

            def converged() -> bool:
                # Every DaemonSet's rollout complete (a staged one goes a node at a time;
                # the local registry's address, so the image, changes between runs), and
                # every pod Running and Ready its applied spec: after an update a pod's
                # status stays the old revision's until its agent reports the new one,
                # and a container in CrashLoopBackOff is Running but not Ready.
                done = True
                for ds in fleet.get("/api/v1/daemonsets")["items"]:
                    st, name = ds.get("status") or {}, ds["metadata"]["name"]
                    rollout = st.get("rollout") or {}
                    if rollout.get("phase", "Complete") != "Complete" or (
                            st.get("observedGeneration", 0) < ds["metadata"]["generation"]):
                        done = False
                        msg = f"{rollout.get('phase', '?')}: {rollout.get('message', '')}"
                        if rollouts.get(name) != msg:
                            rollouts[name] = msg
                            print(f"   rollout of daemonset/{name}: {msg}", flush=True)
                pods = fleet.pods()
                return done and len(pods) == want and all(
                    (p.get("status") or {}).get("phase") == "Running" and pod_up_to_date(p)
                    and (p.get("status") or {}).get("ready") is not False for p in pods)

            try:
                fleet.wait(converged, timeout=300, what=f"{want} pods Running and Ready",
                           interval=0.5)
            except TimeoutError as exc:
                print(_fedctl(fleet, "get", "pods", "-o", "wide"))
                raise SystemExit(f"demo failed: {exc}") from None
            print(f"== {want} pods Running and Ready {time.monotonic() - t1:.1f} s after apply",
                  flush=True)
            print(_fedctl(fleet, "get", "pods", "-o", "wide"), flush=True)
            print(_fedctl(fleet, "get", "daemonsets"), flush=True)
            a = fleet.agents[0]
            page = fleet.pod_page(f"web-{a.name}", port=8080)
            print(f"== what pod web-{a.name} serves on port 8080 ->\n{page}", flush=True)
            if duration == 0:
                print("== demo converged; DEMO_DURATION=0, stopping", flush=True)
                return 0
            print("== demo running; Ctrl-C stops everything (try: "
                  f"FEDCTL_CONFIG={fleet.context_file} .venv/bin/fedctl get pods)", flush=True)
            _wait_for_stop(duration)
            print("stopping ...", flush=True)
    except (TimeoutError, RuntimeError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        for p in [fleet.cloud, *(a.proc for a in fleet.agents)]:
            if p is not None:
                print(f"--- last lines of {p.name} ({p.log})\n{p.tail(15)}", file=sys.stderr)
        return 1
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    """The secure mosquitto on its own, for a cloudcore started by hand (the README's
    quickstart): TLS from the fleet CA in STATE_DIR, no anonymous clients, the password
    file and ACL cloudcore keeps, reloaded when they change. Prints cloudcore's flags."""
    import logging

    from testbed.broker import BrokerSecurity, Mosquitto

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hosts = tuple(args.host) or ("127.0.0.1",)
    workdir = Path(args.workdir).resolve()
    broker = Mosquitto(hosts=hosts, port=args.port, workdir=workdir,
                       security=None if args.insecure else BrokerSecurity(),
                       insecure=args.insecure)
    if not args.insecure:
        argv = [sys.executable, "-m", "cloudcore", "pki", "broker", "--state-dir",
                args.state_dir, "--out", str(broker.tls_dir)]
        for h in hosts:
            argv += ["--host", h]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            print(f"testbed broker: {r.stderr.strip()}", file=sys.stderr)
            return 1
    with broker:
        run = workdir / "run"
        scheme = "mqtt" if args.insecure else "mqtts"
        print(f"mosquitto on {scheme}://{hosts[0]}:{broker.port}   log {run / 'mosquitto.log'}")
        if args.insecure:
            print(f"cloudcore flags:  --mqtt-port {broker.port} --insecure")
        else:
            print(f"cloudcore flags:  --state-dir {args.state_dir} --mqtt-host {hosts[0]} "
                  f"--mqtt-port {broker.port} --mqtt-tls --mosquitto-passwd {run / 'passwd'} "
                  f"--mosquitto-acl {run / 'acl'}", flush=True)
        _wait_for_stop(None)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from testbed.bench import batch_size, bench_rollout, bench_sync

    if args.what == "idle":
        from testbed.bench_idle import main as bench_idle

        argv = ["--duration", str(args.duration), "--pods", str(args.pods)]
        bench_idle([*argv, *(["--workdir", args.workdir] if args.workdir else [])])
        return 0
    workdir = Path(args.workdir or f"var/{'bench' if args.what == 'sync' else 'bench-rollout'}")
    if args.what == "rollout":
        try:
            batch = batch_size(args.batch)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return bench_rollout(nodes=args.nodes, procs=args.procs, batch=batch, workdir=workdir,
                             secure=args.mode != "insecure")
    modes = ("secure", "insecure") if args.mode == "both" else (args.mode,)
    return bench_sync(nodes=args.nodes, procs=args.procs, workdir=workdir, modes=modes)


def cmd_chaos(args: argparse.Namespace) -> int:
    import json

    from testbed.chaos import ChaosError, outbox_figures, run_scenario

    if args.scenario == "outbox":
        print(json.dumps(outbox_figures(pods=args.pods, heartbeat_s=args.heartbeat_default),
                         indent=2))
        return 0
    s = _settings(args)
    s.agent_args = ("--mqtt-keepalive", str(args.keepalive))
    s.broker_probe = True  # the message faults publish as a client with broker access
    with Fleet(s) as fleet:
        fleet.wait_nodes_ready(timeout=60)
        _print_fleet(fleet)
        try:
            run_scenario(fleet, args.scenario, minutes=args.minutes, pods=args.pods,
                         cycles=args.cycles, delay_ms=args.delay_ms, loss_pct=args.loss)
        except ChaosError as exc:  # a fault this machine cannot inject: say which
            print(f"testbed chaos {args.scenario}: {exc}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="testbed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("up", cmd_up), ("demo", cmd_demo)):
        s = sub.add_parser(name)
        s.add_argument("--nodes", type=int, default=3)
        s.add_argument("--workdir", default="var/testbed")
        s.add_argument("--heartbeat", type=float, default=5.0, help="agent heartbeat, seconds")
        s.add_argument("--no-netns", action="store_true",
                       help="run agents in the host network (pods' ports may clash)")
        s.add_argument("--insecure", action="store_true",
                       help="the old open fleet: anonymous plain MQTT, open plain-HTTP API, "
                            "unjoined agents (warns; for comparison only)")
        s.add_argument("--node-certs", action="store_true",
                       help="agents log in to the broker with client certificates")
        s.set_defaults(fn=fn)
    br = sub.add_parser("broker", help="the secure mosquitto alone, for a cloudcore started "
                                       "by hand (prints cloudcore's flags)")
    br.add_argument("--state-dir", required=True, help="cloudcore's state dir (its fleet CA)")
    br.add_argument("--port", type=int, default=8883)
    br.add_argument("--host", action="append", default=[],
                    help="address to listen on and name in the certificate (127.0.0.1)")
    br.add_argument("--workdir", default="var/broker")
    br.add_argument("--insecure", action="store_true", help="plain and anonymous (warns)")
    br.set_defaults(fn=cmd_broker)
    b = sub.add_parser("bench")
    b.add_argument("what", choices=["sync", "rollout", "idle"])
    b.add_argument("--nodes", type=int, default=5000)
    b.add_argument("--procs", type=int, default=2, help="simulator processes")
    b.add_argument("--batch", default="10%",
                   help="rollout: maxUnavailable, a number or a percentage (default 10%%)")
    b.add_argument("--mode", choices=["both", "secure", "insecure"], default="both",
                   help="sync: the secure fleet (joined nodes, TLS, sealed messages), the "
                        "--insecure one, or both side by side (default); rollout: secure "
                        "unless insecure")
    b.add_argument("--workdir", default=None,
                   help="default var/bench (sync), var/bench-rollout (rollout)")
    b.add_argument("--duration", type=float, default=600.0,
                   help="idle: capture window in seconds (default 600)")
    b.add_argument("--pods", type=int, default=10, help="idle: pods on the second node")
    b.set_defaults(fn=cmd_bench)
    from testbed.chaos import SCENARIOS

    c = sub.add_parser("chaos", help="start a fleet and run a named fault scenario")
    c.add_argument("scenario", choices=SCENARIOS)
    c.add_argument("--nodes", type=int, default=3)
    c.add_argument("--workdir", default="var/chaos")
    c.add_argument("--heartbeat", type=float, default=5.0, help="agent heartbeat, seconds")
    c.add_argument("--keepalive", type=int, default=10, help="agent MQTT keepalive, seconds")
    c.add_argument("--no-netns", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("--insecure", action="store_true", help="the old open fleet (warns)")
    c.add_argument("--node-certs", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("--minutes", type=float, default=1.0, help="partition / flaky duration")
    c.add_argument("--pods", type=int, default=20, help="offline-reboot pods; outbox pods")
    c.add_argument("--cycles", type=int, default=20, help="restarts / kills")
    c.add_argument("--delay-ms", type=int, default=200)
    c.add_argument("--loss", type=float, default=5.0, help="flaky: packet loss, percent")
    c.add_argument("--heartbeat-default", type=float, default=30.0,
                   help="outbox: the heartbeat the figure assumes (agent default 30 s)")
    c.set_defaults(fn=cmd_chaos)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
