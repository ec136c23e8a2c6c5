"""Kubernetes resource quantities: cpu in millicores, memory in bytes."""

from __future__ import annotations

import re

from shared.errors import ObjectError

_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DEC = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QTY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")


def parse_cpu(value: str | int | float, *, field: str = "cpu") -> int:
    """'250m' -> 250, '1' -> 1000, 0.5 -> 500 (millicores)."""
    s = str(value).strip()
    m = _QTY.match(s)
    if not m or m.group(2) not in ("", "m"):
        raise ObjectError(
            f"{field}: invalid cpu quantity {value!r} (use '500m' or '2')", field=field
        )
    number = float(m.group(1))
    return round(number) if m.group(2) == "m" else round(number * 1000)


def parse_memory(value: str | int | float, *, field: str = "memory") -> int:
    """'64Mi' -> 67108864, '1G' -> 10**9, 1024 -> 1024 (bytes)."""
    s = str(value).strip()
    m = _QTY.match(s)
    if not m:
        raise ObjectError(f"{field}: invalid memory quantity {value!r} (use '64Mi')", field=field)
    number, unit = float(m.group(1)), m.group(2)
    if unit in _BIN:
        return round(number * _BIN[unit])
    if unit in _DEC:
        return round(number * _DEC[unit])
    raise ObjectError(f"{field}: unknown unit {unit!r} in {value!r}", field=field)


def parse_count(value: str | int | float, *, field: str) -> int:
    """Plain integer resources: pods, accelerators ('nvidia.com/gpu': 1)."""
    try:
        n = int(str(value))
    except ValueError:
        raise ObjectError(f"{field}: expected a whole number, got {value!r}", field=field) from None
    if n < 0:
        raise ObjectError(f"{field}: must not be negative", field=field)
    return n


def parse_resource(name: str, value: str | int | float, *, field: str) -> int:
    if name == "cpu":
        return parse_cpu(value, field=field)
    if name in ("memory", "ephemeral-storage"):
        return parse_memory(value, field=field)
    return parse_count(value, field=field)


def format_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def format_memory(n: int) -> str:
    for unit in ("Gi", "Mi", "Ki"):
        if n >= _BIN[unit] and n % _BIN[unit] == 0:
            return f"{n // _BIN[unit]}{unit}"
    return str(n)
