"""Kubernetes label selector strings: `a=b,c==d,e!=f,g,!h`."""

from __future__ import annotations

from collections.abc import Callable

from shared.errors import ObjectError

Match = Callable[[dict[str, str]], bool]


def parse_selector(text: str) -> Match:
    """A predicate over labels; raises ObjectError (field labelSelector) if malformed."""
    tests: list[Match] = []
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = (p.strip() for p in term.split("!=", 1))
            tests.append(lambda labels, k=k, v=v: labels.get(k) != v)
        elif "==" in term or "=" in term:
            k, v = (p.strip() for p in term.replace("==", "=", 1).split("=", 1))
            tests.append(lambda labels, k=k, v=v: labels.get(k) == v)
        elif term.startswith("!"):
            k = term[1:].strip()
            tests.append(lambda labels, k=k: k not in labels)
        else:
            k = term
            tests.append(lambda labels, k=k: k in labels)
        if not k or any(c in k for c in " =!"):
            raise ObjectError(f"labelSelector: invalid term {term!r}", field="labelSelector")
    return lambda labels: all(t(labels) for t in tests)
