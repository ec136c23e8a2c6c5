"""`testbed`: run a local edgefed fleet, the demo, and the benchmarks.

    testbed up --nodes 3          start everything, print how to reach it, Ctrl-C stops;
                                  a second run reuses var/testbed and says so (--fresh)
    testbed demo                  up + apply examples/ + wait for convergence + fetch a page,
                                  in var/demo, started clean (--reuse keeps the last one)
    testbed broker --state-dir S  the secure mosquitto alone, for a cloudcore run by hand

  Both are secure by default: a TLS broker with no anonymous clients and per-node ACLs,
  cloudcore over HTTPS with a token, agents that join with one-use tokens; fedctl gets
  server, token and CA from WORKDIR/fedctl.yaml (export FEDCTL_CONFIG=...). --insecure
  is the old open fleet, for comparison only.

    testbed bench sync --nodes N  simulated fleet: time for a DaemonSet to be acked by all,
                                  secure (joined, TLS, sealed) and --insecure side by side
    testbed bench storm --nodes N simulated fleet converged, every broker killed -9 and
                                  restarted: time until every node is Ready, NotReady
                                  nodes, snapshots vs deltas, acked updates lost (0);
                                  --shards 3: then onto 3 cloudcore shards, one killed -9
    testbed bench rollout         simulated fleet: health-gated DaemonSet rollouts, a good
                                  update in batches (--batch 10%) and a bad one rolled back
    testbed bench brokers         the broker tier by measurement: N secure MQTT sessions on
                                  several mosquittos and on a NATS cluster (--sessions)
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
import urllib.error
from pathlib import Path
from typing import Any

import yaml

from fedctl.render import pod_up_to_date
from testbed.fleet import Fleet, FleetSettings, clear_workdir, earlier_run

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


def _prepare_workdir(workdir: Path, *, fresh: bool, what: str, fresh_flag: str) -> None:
    """Start clean (`fresh`: an earlier run's state removed) or say what is reused."""
    earlier = earlier_run(workdir)
    if fresh:
        if earlier or workdir.exists():
            clear_workdir(workdir)
            print(f"starting clean: removed {workdir} (an earlier {what}'s state)", flush=True)
        return
    if earlier:
        print(f"reusing {workdir} from an earlier {what}: " + "; ".join(earlier)
              + f". {fresh_flag} starts clean.", flush=True)


def _print_reused(fleet: Fleet) -> None:
    """The objects and nodes of an earlier run that are back in this one."""
    running = {a.name for a in fleet.agents}
    old_nodes = [f"{n['metadata']['name']} ({(n.get('status') or {}).get('ready', '?')})"
                 for n in fleet.nodes() if n["metadata"]["name"] not in running]
    workloads = [f"{plural[:-1]}/{o['metadata'].get('namespace', 'default')}/"
                 f"{o['metadata']['name']}"
                 for plural in ("daemonsets", "deployments")
                 for o in fleet.get(f"/api/v1/{plural}")["items"]]
    if workloads:
        print(f"  from the earlier run: {', '.join(workloads)}", flush=True)
    if old_nodes:
        print(f"  nodes of the earlier run not started now: {', '.join(old_nodes)}", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    _prepare_workdir(workdir, fresh=args.fresh, what="run", fresh_flag="--fresh")
    reused = bool(earlier_run(workdir))
    fleet = Fleet(_settings(args))
    print(f"starting a fleet of {args.nodes} edge agents ...", flush=True)
    with fleet:
        fleet.wait_nodes_ready(timeout=60)
        print("fleet is up:")
        _print_fleet(fleet)
        if reused:
            _print_reused(fleet)
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


def workload_refs(docs: str) -> list[str]:
    """`Kind/namespace/name` of each workload in `docs` (what the demo applied)."""
    return [f"{d['kind']}/{d['metadata'].get('namespace') or 'default'}/{d['metadata']['name']}"
            for d in yaml.safe_load_all(docs)
            if d and d.get("kind") in ("DaemonSet", "Deployment")]


def stragglers(workloads: dict[str, dict[str, Any] | None], pods: list[dict[str, Any]], *,
               want: int, nodes: set[str]) -> list[str]:
    """What keeps the applied workloads from having converged, one line each (empty:
    converged): a workload whose rollout is not Complete at its generation, a pod of
    theirs not Running, Ready and on its applied spec, or the wrong number of pods.
    `workloads`: ref -> the object (None: not found); `pods`: the cluster's (only those
    the workloads own on `nodes`, or unscheduled, count; others are not the demo's)."""
    out: list[str] = []
    for ref, w in workloads.items():
        if w is None:
            out.append(f"{ref.lower()}: not found")
            continue
        st = w.get("status") or {}
        rollout = st.get("rollout") or {}
        phase = rollout.get("phase", "Complete")
        if st.get("observedGeneration", 0) < w["metadata"].get("generation", 0):
            out.append(f"{ref.lower()}: generation {w['metadata'].get('generation')} not "
                       f"observed yet (at {st.get('observedGeneration', 0)})")
        elif phase != "Complete":
            out.append(f"{ref.lower()}: rollout {phase}: {rollout.get('message', '')}".rstrip())
    mine = [p for p in pods
            if (p["metadata"].get("annotations") or {}).get("edgefed.io/owner") in workloads
            and ((p.get("spec") or {}).get("nodeName") in nodes | {None})]
    good = 0
    for p in sorted(mine, key=lambda p: p["metadata"]["name"]):
        st = p.get("status") or {}
        if (st.get("phase") == "Running" and pod_up_to_date(p)
                and st.get("ready") is not False):
            good += 1
            continue
        where = (p.get("spec") or {}).get("nodeName") or "unscheduled"
        state = st.get("phase", "Pending") + "".join(
            f": {x}" for x in (st.get("reason"), st.get("message")) if x)
        if st.get("phase") == "Running" and not pod_up_to_date(p):
            state += " (not yet on its applied spec)"
        elif st.get("phase") == "Running":
            state += " (not Ready)"
        out.append(f"pod/{p['metadata'].get('namespace', 'default')}/{p['metadata']['name']} "
                   f"on {where}: {state[:300]}")
    if len(mine) != want or good != want:
        out.append(f"{good} of {want} pods Running and Ready ({len(mine)} exist)")
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    duration_env = os.environ.get("DEMO_DURATION", "")
    duration = float(duration_env) if duration_env else None
    reuse = args.reuse or os.environ.get("DEMO_REUSE", "") not in ("", "0")
    _prepare_workdir(Path(args.workdir), fresh=not reuse, what="demo",
                     fresh_flag="Without --reuse (DEMO_REUSE=1) the demo")
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
            refs = workload_refs(docs)
            nodes = {a.name for a in fleet.agents}
            t1 = time.monotonic()
            said: dict[str, str] = {}
            left: list[str] = []

            def get_or_none(ref: str) -> dict[str, Any] | None:
                kind, ns, name = ref.split("/")
                try:
                    return dict(fleet.get(f"/api/v1/{kind.lower()}s/{ns}/{name}"))
                except urllib.error.HTTPError as exc:
                    if exc.code == 404:
                        return None
                    raise

            def converged() -> bool:
                # Only what the demo applied counts (a reused fleet may hold more): each
                # workload's rollout Complete at its generation (a staged one goes a node
                # at a time), and each of its pods Running and Ready on its applied spec
                # (after an update a pod's status is the old revision's until its agent
                # reports the new one; a container in CrashLoopBackOff is Running but not
                # Ready).
                workloads = {ref: get_or_none(ref) for ref in refs}
                for ref, w in workloads.items():
                    rollout = ((w or {}).get("status") or {}).get("rollout") or {}
                    msg = f"{rollout.get('phase', '?')}: {rollout.get('message', '')}"
                    if rollout and rollout.get("phase") != "Complete" and said.get(ref) != msg:
                        said[ref] = msg
                        print(f"   rollout of {ref.lower()}: {msg}", flush=True)
                left[:] = stragglers(workloads, fleet.pods(), want=want, nodes=nodes)
                return not left

            try:
                fleet.wait(converged, timeout=300, what=f"{want} pods Running and Ready",
                           interval=0.5)
            except TimeoutError:
                print(_fedctl(fleet, "get", "pods", "-A", "-o", "wide"))
                raise SystemExit("demo failed: not converged after 300 s; not yet:\n  "
                                 + "\n  ".join(left or ["(the API did not answer)"])) from None
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
    from testbed.bench import batch_size, bench_rollout, bench_sync, sync_modes

    if args.what == "brokers":
        from testbed.bench_brokers import bench_brokers, settings_from

        return bench_brokers(settings_from(args, Path(args.workdir or "var/bench-brokers")))
    if args.what == "idle":
        from testbed.bench_idle import main as bench_idle

        argv = ["--duration", str(args.duration), "--pods", str(args.pods)]
        bench_idle([*argv, *(["--workdir", args.workdir] if args.workdir else [])])
        return 0
    if args.what == "storm":
        from testbed.bench_storm import bench_storm

        return bench_storm(nodes=args.nodes, workdir=Path(args.workdir or "var/bench-storm"),
                           procs=args.procs, brokers=args.brokers, per_broker=args.per_broker,
                           per_sim=args.per_sim, rate=args.rate, stall_s=args.stall,
                           shards=args.shards, lease_s=args.lease_period,
                           broker_storm=args.broker_storm)
    workdir = Path(args.workdir or f"var/{'bench' if args.what == 'sync' else 'bench-rollout'}")
    if args.what == "rollout":
        try:
            batch = batch_size(args.batch)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return bench_rollout(nodes=args.nodes, procs=args.procs, batch=batch, workdir=workdir,
                             secure=args.mode != "insecure")
    return bench_sync(nodes=args.nodes, procs=args.procs, workdir=workdir,
                      modes=sync_modes(args.mode), brokers=args.brokers,
                      per_broker=args.per_broker, per_sim=args.per_sim, rate=args.rate,
                      stall_s=args.stall, steady_s=60.0 if args.idle is None else args.idle)


def cmd_chaos(args: argparse.Namespace) -> int:
    import json

    from testbed.chaos import ChaosError, outbox_figures, run_scenario

    if args.scenario == "outbox":
        print(json.dumps(outbox_figures(pods=args.pods, heartbeat_s=args.heartbeat_default),
                         indent=2))
        return 0
    _prepare_workdir(Path(args.workdir), fresh=True, what="chaos run", fresh_flag="")
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


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and an option's default after its help (not a flag's)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _sub(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=f"{summary}.\n\n{description}", formatter_class=_Help)
    return parser


_UP = """Starts mosquitto (TLS, per-node ACLs), a local OCI registry seeded with busybox,
cloudcore (HTTPS, admin token) and N edge agents that join with one-use tokens, each in
a network namespace of its own when run as root. Prints the API, the console, the
registry's image and the fedctl context file; Ctrl-C stops everything.

The work directory is kept between runs: a second run takes over the cloud's objects
and the agents' state (joins, images, pods) and says so; --fresh starts clean."""

_DEMO = """`testbed up` in a state directory of its own (var/demo), started clean, then:
fedctl apply -f examples/ (with the registry's image for ${IMAGE}), a wait of up to
300 s until every pod of those workloads is Running and Ready (a failure names what
did not converge and its state), and a page fetched from a pod. DEMO_DURATION=0 stops
once converged; --reuse (or DEMO_REUSE=1) keeps the previous demo's state, which shows a
staged rollout (the registry's address, so the image, changes between runs)."""


def build_parser() -> argparse.ArgumentParser:
    """The `testbed` command line: every subcommand and option with its help."""
    p = argparse.ArgumentParser(prog="testbed", description=__doc__, formatter_class=_Help)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, fn, summary, description, workdir in (
            ("up", cmd_up, "start a local fleet and keep it running until Ctrl-C", _UP,
             "var/testbed"),
            ("demo", cmd_demo, "up + apply examples/ + wait for convergence + fetch a page",
             _DEMO, "var/demo")):
        s = _sub(sub, name, summary, description)
        s.add_argument("--nodes", type=int, default=3, help="edge agents to start")
        s.add_argument("--workdir", default=workdir,
                       help="state, logs and the fedctl context file (fedctl.yaml)")
        if name == "up":
            s.add_argument("--fresh", action="store_true",
                           help="delete what an earlier run left in --workdir first (its "
                                "cloud state, nodes, workloads, images, containers)")
        else:
            s.add_argument("--reuse", action="store_true",
                           help="keep the previous demo's state instead of starting clean "
                                "(also DEMO_REUSE=1)")
        s.add_argument("--heartbeat", type=float, default=5.0,
                       help="agent heartbeat, seconds (NotReady after 3 missed)")
        s.add_argument("--no-netns", action="store_true",
                       help="run agents in the host network (pods' ports may clash)")
        s.add_argument("--insecure", action="store_true",
                       help="the old open fleet: anonymous plain MQTT, open plain-HTTP API, "
                            "unjoined agents (warns; for comparison only)")
        s.add_argument("--node-certs", action="store_true",
                       help="agents log in to the broker with client certificates")
        s.set_defaults(fn=fn)
    br = _sub(sub, "broker", "the secure mosquitto alone, for a cloudcore started by hand",
              "TLS from the fleet CA in --state-dir (made there if missing), no anonymous "
              "clients, the password file\nand ACL cloudcore keeps, reloaded when they "
              "change. Prints the flags to start cloudcore with.")
    br.add_argument("--state-dir", required=True, help="cloudcore's state dir (its fleet CA)")
    br.add_argument("--port", type=int, default=8883, help="port to listen on")
    br.add_argument("--host", action="append", default=[],
                    help="address to listen on and name in the certificate; repeatable "
                         "(127.0.0.1)")
    br.add_argument("--workdir", default="var/broker",
                    help="mosquitto's config, TLS files and log")
    br.add_argument("--insecure", action="store_true", help="plain and anonymous (warns)")
    br.set_defaults(fn=cmd_broker)
    b = _sub(sub, "bench", "benchmarks that print figures (docs/benchmarks.md)",
             "sync     simulated fleet: time for a DaemonSet to be acked by every node\n"
             "storm    simulated fleet converged, every broker killed -9 and restarted "
             "(python -m testbed.bench_storm --help)\n"
             "rollout  simulated fleet: a health-gated rollout in batches, and a bad one "
             "rolled back\n"
             "idle     two real agents at their defaults: idle link bytes per node by "
             "packet capture\n"
             "brokers  N secure MQTT sessions on several mosquittos and on a NATS cluster: "
             "connect,\n         idle cost, fan-in, a message to every node "
             "(python -m testbed.bench_brokers --help)")
    b.add_argument("what", choices=["sync", "storm", "rollout", "idle", "brokers"],
                   help="which benchmark")
    b.add_argument("--nodes", type=int, default=5000,
                   help="sync, storm, rollout: simulated nodes")
    b.add_argument("--procs", type=int, default=None,
                   help="simulator processes (default: enough for the open-file limit, at "
                        "least 2); sync and storm also take --brokers, --per-broker, "
                        "--per-sim, --rate and --stall below")
    b.add_argument("--batch", default="10%",
                   help="rollout: maxUnavailable, a number or a percentage")
    b.add_argument("--mode", choices=["both", "secure", "insecure"], default=None,
                   help="sync: the secure fleet (joined nodes, TLS, sealed messages), the "
                        "--insecure one (an anonymous broker, only when asked), or both side by "
                        "side (default: secure); rollout: secure unless insecure")
    b.add_argument("--workdir", default=None,
                   help="var/bench (sync), var/bench-storm (storm), var/bench-rollout "
                        "(rollout) when not given")
    b.add_argument("--duration", type=float, default=600.0,
                   help="idle: capture window in seconds")
    b.add_argument("--pods", type=int, default=10, help="idle: pods on the second node")
    b.add_argument("--shards", type=int, default=0,
                   help="storm: after the broker storm, move the fleet onto N real cloudcore "
                        "shards (real nats-server) and kill -9 one (default 0: none)")
    b.add_argument("--lease-period", type=float, default=15.0,
                   help="storm: the shards' lease period, s")
    b.add_argument("--no-broker-storm", dest="broker_storm", action="store_false",
                   help="storm: skip the broker storm (with --shards: the shard kill only)")
    from testbed.bench_brokers import add_arguments as brokers_arguments

    brokers_arguments(b.add_argument_group("brokers (var/bench-brokers)"))
    b.set_defaults(fn=cmd_bench)
    from testbed.chaos import SCENARIOS

    c = _sub(sub, "chaos", "start a fleet, run a named fault scenario, print its figures",
             "partition       cut one agent's link for --minutes, two updates meanwhile\n"
             "flaky           delay and loss on every link for --minutes, an update every "
             "10 s\n"
             "                (no netem in the kernel: the loss alone, by nftables)\n"
             "broker-restart  restart mosquitto --cycles times, an update each time\n"
             "cloud-kill      kill -9 cloudcore --cycles times\n"
             "agent-kill      kill -9 one agent --cycles times\n"
             "offline-reboot  an agent rebooted while cut off, with --pods pods\n"
             "outbox          the outbox's size figures (needs no fleet)\n\n"
             "docs/reliability.md has the scenarios and their figures.")
    c.add_argument("scenario", choices=SCENARIOS, help="which fault")
    c.add_argument("--nodes", type=int, default=3, help="edge agents to start")
    c.add_argument("--workdir", default="var/chaos", help="the fleet's state and logs")
    c.add_argument("--heartbeat", type=float, default=5.0, help="agent heartbeat, seconds")
    c.add_argument("--keepalive", type=int, default=10, help="agent MQTT keepalive, seconds")
    c.add_argument("--no-netns", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("--insecure", action="store_true", help="the old open fleet (warns)")
    c.add_argument("--node-certs", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("--minutes", type=float, default=1.0, help="partition / flaky duration")
    c.add_argument("--pods", type=int, default=20, help="offline-reboot pods; outbox pods")
    c.add_argument("--cycles", type=int, default=20, help="restarts / kills")
    c.add_argument("--delay-ms", type=int, default=200, help="flaky: link delay, ms")
    c.add_argument("--loss", type=float, default=5.0, help="flaky: packet loss, percent")
    c.add_argument("--heartbeat-default", type=float, default=30.0,
                   help="outbox: the heartbeat the figure assumes, seconds")
    c.set_defaults(fn=cmd_chaos)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
