"""A workload's pod template, prepared once for the many pods made from it."""

from __future__ import annotations

import functools
from typing import Any

from cloudcore.fleet import naming
from shared.entries import pod_revision
from shared.models import Pod, PodTemplate, spec_hash


class Template:
    """A workload's pod template, prepared once for the many pods made from it (a
    DaemonSet over 100k nodes makes 100k pods of one template)."""

    def __init__(self, tpl: PodTemplate) -> None:
        self.tpl = tpl
        self.thash = spec_hash(tpl.dump())

    @functools.cached_property
    def spec(self) -> dict[str, Any]:
        return self.tpl.spec.model_dump()

    @functools.cached_property
    def revision(self) -> str:
        """What every pod of it runs: the same spec but nodeName."""
        return pod_revision(self.tpl.spec.dump())

    def pod(self, *, ns: str, name: str, owner: str, node: str | None) -> Pod:
        # One validation builds the pod with its own copies of every list and dict (a
        # deep copy of the template's model plus a placeholder pod cost three times more).
        return Pod.model_validate({
            "metadata": {"name": name, "namespace": ns, "labels": self.tpl.metadata.labels,
                         "annotations": {**self.tpl.metadata.annotations, naming.OWNER: owner,
                                         naming.TEMPLATE_HASH: self.thash}},
            "spec": self.spec if node is None else {**self.spec, "node_name": node},
        })
