"""A workload's pod template, prepared once for the many pods made from it."""

from __future__ import annotations

import functools
import sys
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

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        """The labels every pod of the template carries: one dict for all of them (pod
        labels are never changed in place; a pod made anew gets this dict again)."""
        return {sys.intern(k): sys.intern(v) for k, v in self.tpl.metadata.labels.items()}

    def annotations(self, owner: str) -> dict[str, str]:
        """The annotations every pod of the template and `owner` starts with (the
        template's, OWNER, TEMPLATE_HASH and REVISION): one dict shared by the siblings
        until one of them gets its own. Pod annotations are copied on write
        (`with_annotation`), never changed in place."""
        shared = self._annotations.get(owner)
        if shared is None:
            shared = self._annotations[owner] = {
                **self.tpl.metadata.annotations, naming.OWNER: sys.intern(owner),
                naming.TEMPLATE_HASH: sys.intern(self.thash),
                naming.REVISION: sys.intern(self.revision)}
        return shared

    @functools.cached_property
    def _annotations(self) -> dict[str, dict[str, str]]:
        return {}

    def pod(self, *, ns: str, name: str, owner: str, node: str | None) -> Pod:
        # One validation builds the pod's metadata; the spec is frozen, so the pod takes
        # the template's own parts (validation passes a PodSpec instance through). Its
        # labels and annotations are then the dicts shared by every pod of the template.
        annotations = self.annotations(owner)
        pod = Pod.model_validate({
            "metadata": {"name": name, "namespace": sys.intern(ns), "labels": {},
                         "annotations": {}},
            "spec": self.spec_on(node),
        })
        meta = pod.metadata.__dict__
        meta["labels"], meta["annotations"] = self.labels, annotations
        return pod


def with_annotation(pod: Any, key: str, value: str) -> None:
    """Set one annotation of a pod, copy on write: a pod's annotations dict may be
    shared with its siblings (`Template.annotations`), so it is replaced, never
    changed in place. No-op if it already has that value."""
    ann = pod.metadata.annotations
    if ann.get(key) != value:
        pod.metadata.annotations = {**ann, key: value}
