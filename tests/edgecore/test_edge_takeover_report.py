"""A new owner of the node's desired set gets the full status once (issue 14).

A shard killed in the seconds after it acked a report, before it wrote its node summary
to NATS KV, takes that report with it; the shard that takes the node over sends a
snapshot under a new epoch. The agent then reports its node status and every pod's
status again, through the outbox, in one report; an ordinary snapshot (same epoch) and a
delta do not. Real LMDB cache, real sync handler and reporter, no broker.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from edgecore.cache import Cache
from edgecore.sync import Renewed, Reporter, SyncHandler
from shared.codec import Ack, Desired, Report, ReportAck, decode
from shared.entries import pod_entry, pod_key
from shared.models import Pod
from shared.pods import ContainerStatus, PodStatus

NODE = "edge-1"
WEB, DB = pod_key("default", "web"), pod_key("default", "db")
RUNNING = PodStatus(phase="Running", container_statuses=[
    ContainerStatus(name="main", state="running", ready=True)])


def entry(name: str) -> dict[str, Any]:
    return pod_entry(Pod.model_validate({
        "metadata": {"name": name, "namespace": "default", "uid": f"u-{name}"},
        "spec": {"containers": [{"name": "main", "image": "busybox:1"}]}}))


class Agent:
    """The agent's sync half as `edgecore.agent` wires it: one `Renewed` given to both."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.status: dict[str, Any] = {"arch": "amd64", "agentVersion": "1.0.0",
                                       "agentUpgrade": None}
        renewed = Renewed()
        self.sync = SyncHandler(node=NODE, cache=cache, renewed=renewed)
        self.reporter = Reporter(node=NODE, cache=cache, desired=lambda: self.sync.desired,
                                 node_status=lambda: dict(self.status), batch_s=0,
                                 renewed=renewed)

    async def desired(self, epoch: str, base: int, gen: int, *, snapshot: bool,
                      put: dict[str, Any]) -> None:
        replies = await self.sync.handle(Desired(node=NODE, epoch=epoch, base=base, gen=gen,
                                                 snapshot=snapshot, put=put))
        assert replies == [Ack(node=NODE, epoch=epoch, gen=gen)]

    async def acked(self) -> None:
        """The cloud (the shard about to die) acks everything sent: the outbox empties."""
        await self.sync.handle(ReportAck(node=NODE, seq=self.cache.last_seq()))
        assert self.cache.outbox() == []

    def outbox(self) -> list[Report]:
        out = []
        for _, raw in self.cache.outbox():
            msg = decode(raw)
            assert isinstance(msg, Report)
            out.append(msg)
        return out


async def converged(agent: Agent) -> None:
    """Owner A (epoch EA) sent two pods; they run, the agent upgraded, all acked."""
    assert await agent.reporter.flush() is not None  # the first report: node status
    await agent.desired("EA", 0, 1, snapshot=True, put={WEB: entry("web"), DB: entry("db")})
    agent.reporter.update(WEB, RUNNING)
    agent.reporter.update(DB, RUNNING)
    assert await agent.reporter.flush() is not None
    agent.status["agentVersion"] = "1.1.0"
    agent.status["agentUpgrade"] = {"version": "1.1.0", "phase": "Healthy", "message": "",
                                    "previous": "1.0.0"}
    agent.reporter.node_status_changed()
    assert await agent.reporter.flush() is not None
    await agent.acked()  # ... by owner A, which is then killed before sharing it


async def test_a_new_epoch_snapshot_sends_the_full_status_once(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as cache:
        agent = Agent(cache)
        await converged(agent)
        # Owner B takes the node over: the same set, as a snapshot under its epoch.
        await agent.desired("EB", 0, 1, snapshot=True, put={WEB: entry("web"), DB: entry("db")})
        # The reconciler's next pass finds nothing changed; the resend still goes.
        agent.reporter.update(WEB, RUNNING)
        agent.reporter.update(DB, RUNNING)
        seq = await agent.reporter.flush()
        assert seq is not None
        (report,) = agent.outbox()
        assert (report.seq, report.epoch, report.gen) == (seq, "EB", 1)
        assert report.node_status is not None
        assert report.node_status["agentVersion"] == "1.1.0"
        assert report.node_status["agentUpgrade"]["phase"] == "Healthy"
        assert set(report.pods) == {WEB, DB}
        assert all(v is not None and v["phase"] == "Running" for v in report.pods.values())
        # Once: the next pass and a later delta say nothing more.
        agent.reporter.update(WEB, RUNNING)
        agent.reporter.update(DB, RUNNING)
        assert await agent.reporter.flush() is None
        await agent.desired("EB", 1, 2, snapshot=False, put={"configmap/default/c": {}})
        assert await agent.reporter.flush() is None
        # Another snapshot of the same owner is no resend: its pods' next statuses go
        # again as for any entry put again (`Renewed`), the node status does not.
        await agent.desired("EB", 0, 3, snapshot=True,
                            put={WEB: entry("web"), DB: entry("db"), "configmap/default/c": {}})
        agent.reporter.update(WEB, RUNNING)
        agent.reporter.update(DB, RUNNING)
        assert await agent.reporter.flush() is not None
        assert agent.outbox()[-1].node_status is None
        assert agent.sync.stats.new_epochs == 1 and agent.reporter.resends == 1


async def test_the_resend_keeps_newer_statuses_and_gone_pods(tmp_path: Path) -> None:
    """A change made after the snapshot wins over the last reported status, and a pod
    that goes away before the report is reported gone, not as it last was."""
    with Cache(tmp_path / "c") as cache:
        agent = Agent(cache)
        await converged(agent)
        await agent.desired("EB", 0, 1, snapshot=True, put={WEB: entry("web")})
        failed = PodStatus(phase="Failed", reason="Error", container_statuses=[
            ContainerStatus(name="main", state="terminated", exit_code=1)])
        agent.reporter.update(WEB, failed)
        agent.reporter.update(DB, None)  # no longer desired: removed
        assert await agent.reporter.flush() is not None
        (report,) = agent.outbox()
        assert report.pods[WEB] is not None and report.pods[WEB]["phase"] == "Failed"
        assert report.pods[DB] is None
        assert report.node_status is not None


async def test_first_snapshot_after_join_sends_nothing_extra(tmp_path: Path) -> None:
    """The first set a node gets (no epoch before) is not a new owner: its statuses go
    out as they change, as ever."""
    with Cache(tmp_path / "c") as cache:
        agent = Agent(cache)
        assert await agent.reporter.flush() is not None
        await agent.acked()
        await agent.desired("EA", 0, 1, snapshot=True, put={WEB: entry("web")})
        assert agent.sync.stats.new_epochs == 0 and agent.reporter.resends == 0
        assert await agent.reporter.flush() is None


async def test_the_running_reporter_sends_it_without_a_pod_update(tmp_path: Path) -> None:
    """The reporter's loop is woken by the new owner alone (a node with no pod, or a
    reconciler pass that finds nothing changed, calls nothing)."""
    with Cache(tmp_path / "c") as cache:
        agent = Agent(cache)
        agent.reporter.batch_s = 0.05
        task = asyncio.create_task(agent.reporter.run())
        try:
            for _ in range(200):
                if cache.last_seq() >= 1:
                    break
                await asyncio.sleep(0.01)
            await agent.desired("EA", 0, 1, snapshot=True, put={})
            await agent.acked()
            await agent.desired("EB", 0, 1, snapshot=True, put={})
            for _ in range(200):
                if agent.outbox():
                    break
                await asyncio.sleep(0.01)
            (report,) = agent.outbox()
            assert report.node_status is not None and report.epoch == "EB"
        finally:
            task.cancel()


async def test_a_report_ack_asking_again_sends_everything_once_marked_full(
        tmp_path: Path) -> None:
    """The cloud saw a gap in this node's report seqs (reports published while nothing
    was subscribed) and set `again` on its ack: the next report carries the node status
    and every pod's status, marked `full`, once; ordinary reports are not `full`."""
    with Cache(tmp_path / "c") as cache:
        agent = Agent(cache)
        await converged(agent)
        assert agent.reporter.full_reports == 0
        # the reconciler's pass finds nothing changed: nothing to say
        agent.reporter.update(WEB, RUNNING)
        assert await agent.reporter.flush() is None
        await agent.sync.handle(ReportAck(node=NODE, seq=cache.last_seq(), again=True))
        assert agent.sync.stats.report_again == 1
        agent.reporter.update(WEB, RUNNING)
        agent.reporter.update(DB, RUNNING)
        seq = await agent.reporter.flush()
        assert seq is not None
        (report,) = agent.outbox()
        assert report.full is True and report.seq == seq
        assert report.node_status is not None and report.node_status["agentVersion"] == "1.1.0"
        assert set(report.pods) == {WEB, DB}
        assert agent.reporter.full_reports == 1
        await agent.acked()
        # once: the next change goes as an ordinary report
        failed = PodStatus(phase="Failed", reason="Error", container_statuses=[
            ContainerStatus(name="main", state="terminated", exit_code=1)])
        agent.reporter.update(WEB, failed)
        assert await agent.reporter.flush() is not None
        (later,) = agent.outbox()
        assert later.full is False and set(later.pods) == {WEB} and later.node_status is None


async def test_asked_again_while_a_report_is_being_persisted(tmp_path: Path) -> None:
    """A resend asked for while the previous report is being written goes in the next
    report, node status included (the write in flight must not clear it)."""
    with Cache(tmp_path / "c") as cache:
        agent = Agent(cache)
        await converged(agent)
        real = cache.append_report

        def slow_append(*args: Any, **kwargs: Any) -> Any:
            agent.reporter.resend_all()  # lands while this report is being persisted
            return real(*args, **kwargs)

        agent.reporter.update(WEB, PodStatus(phase="Running"))
        cache.append_report = slow_append  # type: ignore[method-assign]
        try:
            assert await agent.reporter.flush() is not None
        finally:
            cache.append_report = real  # type: ignore[method-assign]
        assert await agent.reporter.flush() is not None
        first, second = agent.outbox()
        assert first.full is False
        assert second.full is True and second.node_status is not None
        assert set(second.pods) == {WEB, DB}


class _HeldCache(Cache):
    """A real LMDB cache whose next status write waits until the test lets it go, so a
    ReportAck can arrive while a report is being persisted (as on a busy agent)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hold: threading.Event | None = None
        self.writing = threading.Event()

    def append_report(self, make: Any, **kw: Any) -> Any:
        if self.hold is not None:
            self.writing.set()
            self.hold.wait(10)
        return super().append_report(make, **kw)


async def test_again_while_a_report_is_written_sends_the_newest_status_in_the_full_one(
        tmp_path: Path) -> None:
    """A ReportAck asking `again` arrives while the agent persists a report that changes
    a pod's status: the full report that follows carries that pod at its new status
    (not the one reported before), even after a reconciler pass that finds it unchanged."""
    with _HeldCache(tmp_path / "c") as cache:
        agent = Agent(cache)
        await converged(agent)
        failed = PodStatus(phase="Failed", reason="Error", container_statuses=[
            ContainerStatus(name="main", state="terminated", exit_code=1)])
        agent.reporter.update(WEB, failed)
        cache.hold = threading.Event()
        flush = asyncio.create_task(agent.reporter.flush())
        assert await asyncio.to_thread(cache.writing.wait, 10)
        await agent.sync.handle(ReportAck(node=NODE, seq=cache.last_seq(), again=True))
        cache.hold.set()
        assert await flush is not None
        cache.hold = None
        agent.reporter.update(WEB, failed)  # the next pass: nothing changed for it
        agent.reporter.update(DB, RUNNING)
        assert await agent.reporter.flush() is not None
        report = agent.outbox()[-1]
        assert report.full is True
        assert set(report.pods) == {WEB, DB}
        assert report.pods[WEB] is not None and report.pods[WEB]["phase"] == "Failed"
