"""Object uids as compact records keep them (issue 13 part 3): the 16 bytes of a
canonical UUID instead of its 36 characters of text. Used by the compact pod
(`template.DaemonPod`) and node (`noderecord.NodeRecord`) records."""

from __future__ import annotations

import uuid


def pack_uid(uid: str | None) -> str | bytes | None:
    """A uid as a compact record keeps it: the 16 bytes of a UUID in its canonical text
    form (49 bytes of heap where the text took 85, and 17 in a stored record instead of
    37), any other text as it is; `uid_text` gives the text back exactly."""
    if uid is None or len(uid) != 36:
        return uid
    try:
        packed = uuid.UUID(uid)
    except ValueError:
        return uid
    return packed.bytes if str(packed) == uid else uid


def uid_text(uid: str | bytes | None) -> str | None:
    """The text of a uid kept by `pack_uid` (what `str(uuid.UUID(bytes=uid))` gives,
    without making the UUID: once per DaemonSet pod of every snapshot, issue 14)."""
    if not isinstance(uid, bytes):
        return uid
    if len(uid) != 16:
        return str(uuid.UUID(bytes=uid))  # raises as it always did
    h = uid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


