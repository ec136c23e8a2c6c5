"""ImagePullBackOff messages put the cause first (issue 16): a user reading a status
cut at 500 characters sees why, not the start of a skopeo command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecore.runtime.errors import ImagePullError
from edgecore.runtime.images import ImageStore, failure_cause

FATAL = 'time="2026-12-06T06:00:00Z" level=fatal msg="initializing source docker://{ref}: {why}"'


@pytest.mark.parametrize(("why", "cause"), [
    ("reading manifest 1 in 10.0.0.1:5000/web: manifest unknown", "manifest unknown"),
    ('pinging container registry h:5000: Get \\"https://h:5000/v2/\\": http: server gave '
     "HTTP response to HTTPS client", "--insecure-registry"),
    ("pinging container registry h:5000: dial tcp 10.0.0.1:5000: connect: connection "
     "refused", "connection refused"),
    ("dial tcp: lookup nope.invalid: no such host", "does not resolve"),
    ("something new", "something new"),
])
def test_failure_cause(why: str, cause: str) -> None:
    assert cause in failure_cause(FATAL.format(ref="h:5000/web:1", why=why))


async def test_a_pull_error_message_starts_with_the_cause(tmp_path: Path) -> None:
    skopeo = tmp_path / "skopeo"
    long_why = "reading manifest 1 in 10.0.0.1:5000/web: manifest unknown"
    skopeo.write_text("#!/bin/sh\necho '" + FATAL.format(ref="10.0.0.1:5000/web:1",
                                                         why=long_why) + "' >&2\nexit 1\n")
    skopeo.chmod(0o755)
    store = ImageStore(tmp_path / "rt", skopeo=str(skopeo), min_free_bytes=0,
                       insecure_registries=("10.0.0.1:5000",))
    with pytest.raises(ImagePullError) as info:
        await store.pull("10.0.0.1:5000/web:1")
    text = str(info.value)
    head = text[:120]
    assert "manifest unknown: the registry has no such tag" in head, text
    assert "skopeo" not in head  # the command line comes after the cause
    assert "exited 1" in text
