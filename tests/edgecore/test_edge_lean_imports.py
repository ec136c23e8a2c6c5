"""The agent's lighter stand-ins for datetime, decimal, platform and the idna codec
(edgecore.lean, issue 16 eighth round): each behaves as the module it stands for, in
a fresh interpreter set up as `edgecore run` sets up the agent."""

from __future__ import annotations

import encodings.idna
import json
import random
import string
import subprocess
import sys

import pytest

from edgecore import lean

CHILD = r"""
import json, sys
from edgecore.lean import lighten_library_imports
done = lighten_library_imports()
out = {"done": done}

import msgspec, datetime, uuid
out["datetime_is_c"] = datetime.datetime.__module__ == "datetime" and not hasattr(
    datetime, "_ymd2ord")
stamp = datetime.datetime(2026, 12, 7, 22, 0, tzinfo=datetime.UTC)
back = msgspec.json.decode(msgspec.json.encode(stamp), type=datetime.datetime)
out["msgspec_datetime"] = back == stamp
out["uuid5"] = str(uuid.uuid5(uuid.NAMESPACE_URL, "edgefed:x"))
out["loaded_after_msgspec"] = sorted(
    m for m in ("decimal", "_decimal", "numbers", "stringprep", "unicodedata",
                "encodings.idna") if m in sys.modules)
out["platform_placeholder"] = type(sys.modules["platform"]).__name__
import platform
out["system"] = platform.system()
out["machine"] = platform.machine()
out["still_placeholder"] = type(sys.modules["platform"]).__name__

out["ascii_idna"] = "broker.example".encode("idna").decode()
out["ascii_loaded"] = "encodings.idna" in sys.modules or "stringprep" in sys.modules
import ssl
ctx = ssl.create_default_context()
ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="broker.example")
out["after_ssl_loaded"] = "stringprep" in sys.modules

out["unicode_idna"] = "bücher.example".encode("idna").decode()
out["decoded"] = b"xn--bcher-kva.example".decode("idna")
import codecs
enc = codecs.getincrementalencoder("idna")()
parts = enc.encode("bücher.", final=False) + enc.encode("example", final=True)
out["incremental"] = parts.decode()

out["python_version"] = platform.python_version()  # any other name: the real module
out["real_platform"] = type(sys.modules["platform"]).__name__

import decimal
out["decimal_real"] = str(decimal.Decimal("1.5") + decimal.Decimal("1"))
try:
    msgspec.json.encode(decimal.Decimal("1.5"))
except TypeError as exc:
    out["msgspec_decimal"] = str(exc)
else:
    out["msgspec_decimal"] = "encoded"
print(json.dumps(out))
"""


def test_the_stand_ins_behave_as_the_modules_they_replace() -> None:
    import platform
    import uuid

    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          check=True, timeout=60)
    got = json.loads(done.stdout)
    assert got["done"] == ["datetime", "platform", "decimal", "encodings.idna"]
    assert got["datetime_is_c"] and got["msgspec_datetime"]
    assert got["uuid5"] == str(uuid.uuid5(uuid.NAMESPACE_URL, "edgefed:x"))
    # msgspec, datetime, uuid and the idna codec in place, and none of what they cost
    assert got["loaded_after_msgspec"] == []
    assert got["platform_placeholder"] == "_PlatformPlaceholder"
    assert (got["system"], got["machine"]) == (platform.system(), platform.machine())
    assert got["still_placeholder"] == "_PlatformPlaceholder"
    # an ASCII server name, as ssl encodes it for every connection: no stringprep
    assert got["ascii_idna"] == "broker.example"
    assert not got["ascii_loaded"] and not got["after_ssl_loaded"]
    # anything else goes to the real codec
    assert got["unicode_idna"] == "xn--bcher-kva.example"
    assert got["decoded"] == "bücher.example"
    assert got["incremental"] == "xn--bcher-kva.example"
    assert got["python_version"] == platform.python_version()
    assert got["real_platform"] == "module"
    # decimal is the real one for anyone who imports it; msgspec in the agent says
    # plainly that it does not take one (the trade, edgecore.lean's docstring)
    assert got["decimal_real"] == "2.5"
    assert "Decimal" in got["msgspec_decimal"] and "unsupported" in got["msgspec_decimal"].lower()


def _outcome(fn, name: str) -> tuple[str, object]:
    try:
        return "ok", fn(name)
    except UnicodeError as exc:
        return type(exc).__name__, str(exc)


def test_the_ascii_codec_encodes_and_fails_as_encodings_idna_does() -> None:
    real = encodings.idna.Codec().encode
    rng = random.Random(16)
    alphabet = string.ascii_letters + string.digits + "-."
    names = ["", ".", "a.", "a..b", ".a", "a" * 63, "a" * 64, ("a" * 63 + ".") * 2,
             "a" * 64 + ".b", "b." + "a" * 64, "10.0.0.1", "broker.example."]
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 140)))
              for _ in range(2000)]
    for name in names:
        assert _outcome(lean._encode, name) == _outcome(real, name), name
    # what the fast path does not take goes to the real codec, errors included
    with pytest.raises(UnicodeError, match="unsupported error handling"):
        lean._encode("a.b", "ignore")
    assert lean._encode("bücher.example") == real("bücher.example")


def test_each_stand_in_leaves_an_imported_module_alone(monkeypatch) -> None:
    # already imported (this test process has them all): nothing is replaced
    import datetime
    import platform

    import msgspec  # noqa: F401

    assert not lean.alias_datetime() and not lean.defer_platform()
    assert not lean.import_msgspec_without_decimal()
    assert sys.modules["datetime"] is datetime and sys.modules["platform"] is platform
    monkeypatch.setitem(sys.modules, "encodings.idna", encodings.idna)
    assert not lean.ascii_idna_first()
