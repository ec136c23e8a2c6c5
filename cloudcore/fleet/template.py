"""A workload's pod template, prepared once for the many pods made from it."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

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

    def spec_on(self, node: str | None) -> Any:
        """The template's spec (a frozen `shared.pods.PodSpec`) with `nodeName`: a
        shallow copy that shares every part with the template's, so 100k pods of one
        template hold one set of containers, volumes and tolerations."""
        spec = self.tpl.spec
        return spec if node is None else msgspec.structs.replace(spec, node_name=node)

    @functools.cached_property
    def revision(self) -> str:
        """What every pod of it runs: the same spec but nodeName."""
        return pod_revision(self.tpl.spec.dump())

    def pod(self, *, ns: str, name: str, owner: str, node: str | None) -> Pod:
        # One validation builds the pod's metadata; the spec is frozen, so the pod takes
        # the template's own parts (validation passes a PodSpec instance through).
        return Pod.model_validate({
            "metadata": {"name": name, "namespace": ns, "labels": self.tpl.metadata.labels,
                         "annotations": {**self.tpl.metadata.annotations, naming.OWNER: owner,
                                         naming.TEMPLATE_HASH: self.thash}},
            "spec": self.spec_on(node),
        })
