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

import msgspec, datetime
out["loaded_after_msgspec"] = sorted(
    m for m in ("decimal", "_decimal", "numbers", "stringprep", "unicodedata",
                "encodings.idna") if m in sys.modules)
import uuid
out["datetime_is_c"] = datetime.datetime.__module__ == "datetime" and not hasattr(
    datetime, "_ymd2ord")
stamp = datetime.datetime(2026, 12, 7, 22, 0, tzinfo=datetime.UTC)
back = msgspec.json.decode(msgspec.json.encode(stamp), type=datetime.datetime)
out["msgspec_datetime"] = back == stamp
out["uuid5"] = str(uuid.uuid5(uuid.NAMESPACE_URL, "edgefed:x"))
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
out["msgspec_uuid"] = msgspec.json.encode(uuid.UUID(int=5)).decode()
print(json.dumps(out))
"""


def test_the_stand_ins_behave_as_the_modules_they_replace() -> None:
    import platform
    import uuid

    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          check=True, timeout=60)
    got = json.loads(done.stdout)
    assert got["done"] == ["dataclasses", "datetime", "platform", "decimal",
                           "encodings.idna"]
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
    assert got["msgspec_uuid"] == '"00000000-0000-0000-0000-000000000005"'


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


DATACLASSES = r'''
import dataclasses, json, sys
from dataclasses import dataclass, field

SOURCE = """
@dataclass
class A:
    x: int
    y: object = "s"
    z: list = field(default_factory=list, repr=False, compare=False)

@dataclass(frozen=True)
class F:
    a: int
    b: tuple = ()

class G(F):
    pass

@dataclass(order=True)
class O:
    a: int
    b: str

@dataclass(unsafe_hash=True)
class U:
    a: int

@dataclass(frozen=True)
class E:
    pass

@dataclass(frozen=True, slots=True, kw_only=True)
class S:
    a: int
    b: int = 2
"""

def outcomes(ns):
    A, F, G, O, U, E, S = (ns[n] for n in "AFGOUES")
    def run(fn):
        try:
            return ["ok", repr(fn())]
        except Exception as exc:
            return [type(exc).__name__, str(exc)]
    def assign(obj, name, value):
        setattr(obj, name, value)
        return getattr(obj, name)
    loop = A(1)
    loop.y = loop
    g = G(1)
    cases = {
        "repr": lambda: [repr(A(1, "t", [9])), repr(F(2, (1,))), repr(O(1, "b")), repr(E()),
                         repr(S(a=1)), repr(U(3)), repr(g)],
        "recursive repr": lambda: repr(loop),
        "eq": lambda: [A(1, "t", [1]) == A(1, "t", [2]), A(1) == A(2), A(1) == 1, F(1) == F(1),
                       S(a=1) == S(a=1, b=2), S(a=1) == S(a=1, b=3), E() == E(), g == F(1)],
        "ne": lambda: [A(1) != A(1), F(1) != F(2)],
        "hash": lambda: [hash(F(1, (2,))), hash(E()), hash(U(3)), hash(S(a=1)), A.__hash__],
        "order": lambda: [O(1, "a") < O(1, "b"), O(2, "a") <= O(1, "z"), O(1, "a") > O(0, "z"),
                          O(1, "a") >= O(1, "a")],
        "order other type": lambda: O(1, "a") < 1,
        "set field": lambda: assign(F(1), "a", 2),
        "set other": lambda: assign(F(1), "zz", 2),
        "del field": lambda: delattr(F(1), "a"),
        "set slots": lambda: assign(S(a=1), "b", 5),
        "subclass sets its own": lambda: assign(g, "extra", 5),
        "subclass sets a field": lambda: assign(g, "a", 5),
        "subclass dels its own": lambda: delattr(g, "extra"),
        "names": lambda: [(m.__name__, m.__qualname__) for m in
                          (F.__setattr__, F.__delattr__, F.__hash__, F.__eq__, O.__lt__)],
        "repr name": lambda: A.__repr__.__name__,
    }
    return {k: run(v) for k, v in cases.items()}

before = {"dataclass": dataclass, "field": field}
exec(SOURCE, before)
from edgecore.lean import share_dataclass_methods
shared = share_dataclass_methods()
after = {"dataclass": dataclass, "field": field}
exec(SOURCE, after)
compiled = sum(1 for n in "AFOUES" for m in vars(after[n]).values()
               if getattr(getattr(m, "__code__", None), "co_filename", "") == "<string>")
print(json.dumps({"shared": shared, "before": outcomes(before), "after": outcomes(after),
                  "compiled_after": compiled}))
'''


def test_shared_dataclass_methods_do_what_the_compiled_ones_do() -> None:
    done = subprocess.run([sys.executable, "-c", DATACLASSES], capture_output=True,
                          text=True, check=True, timeout=60)
    got = json.loads(done.stdout)
    if sys.version_info[:2] != (3, 11):
        assert got["shared"] is False
        return
    assert got["shared"] is True
    for case, before in got["before"].items():
        assert got["after"][case] == before, case
    assert got["before"]["set field"][0] == "FrozenInstanceError"  # the cases bite
    assert got["before"]["order other type"][0] == "TypeError"
    # only __init__ is still compiled from source, one per class
    assert got["compiled_after"] == 6
