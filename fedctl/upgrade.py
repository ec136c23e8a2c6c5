"""`fedctl upgrade nodes`: the AgentUpgrade document it applies (proposal 0006).

Kept apart from the command so the rules (the name `agent-V`, the selector, counts and
percentages, the deadline) are plain functions that say what is wrong in the flag's
own words.
"""

from __future__ import annotations

import re
from typing import Any

from fedctl.errors import UsageError

_COUNT = re.compile(r"^(\d+)(%?)$")
_NAME_CHARS = re.compile(r"[^a-z0-9.-]+")


def upgrade_name(version: str) -> str:
    """`agent-V`, made a valid object name (lowercase; other characters become '-')."""
    name = "agent-" + _NAME_CHARS.sub("-", version.lower()).strip("-.")
    return name[:253].rstrip("-.")


def match_labels(selector: str | None) -> dict[str, str]:
    """`-l k=v,k2=v2` -> matchLabels; only equality (AgentUpgrade selects by matchLabels)."""
    out: dict[str, str] = {}
    for raw in (selector or "").split(","):
        part = raw.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip().lstrip("=")
        if not sep or not key or key.endswith("!") or any(c in key for c in " ()"):
            raise UsageError(f"-l {selector!r}: an AgentUpgrade selects nodes by KEY=VALUE "
                             f"labels only (comma-separated); {part!r} is not one")
        out[key] = value
    return out


def count(flag: str, text: str, *, low: int) -> int | str:
    """A count or a percentage (`2`, `25%`) for `flag`, as the AgentUpgrade takes it."""
    m = _COUNT.match(text.strip())
    if m is None or (m.group(2) and not low <= int(m.group(1)) <= 100) or int(m.group(1)) < low:
        raise UsageError(f"{flag} {text!r}: give a number of nodes (at least {low}) or a "
                         f"percentage of the selected nodes such as 25%")
    return text.strip() if m.group(2) else int(m.group(1))


def document(*, name: str, version: str, image: str, selector: dict[str, str],
             max_unavailable: int | str, failure_threshold: int | str, deadline: int,
             paused: bool = False) -> dict[str, Any]:
    """The AgentUpgrade that `fedctl upgrade nodes` applies."""
    return {"apiVersion": "edgefed.io/v1", "kind": "AgentUpgrade", "metadata": {"name": name},
            "spec": {"version": version, "image": image,
                     "selector": {"matchLabels": selector},
                     "maxUnavailable": max_unavailable, "failureThreshold": failure_threshold,
                     "healthDeadlineSeconds": deadline, "paused": paused}}
