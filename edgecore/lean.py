"""Lighter stand-ins for standard-library modules that the agent's libraries import at
their top and use one or two things of, and cheaper dataclass methods (issue 16, eighth
round).

`lighten_library_imports()` runs once a process is the agent (`edgecore run`, after the
launcher's hand-over), before msgspec and the agent's modules are imported. Each stand-in
keeps the behaviour the agent and its libraries see; what each saved is in
docs/benchmarks.md ("The agent's memory, eighth round"), measured with
`python -m testbed.bench_agent_floor`:

- `dataclasses`: each class gets closures of shared functions for `__repr__`, `__eq__`,
  `__hash__` and a frozen class's `__setattr__`/`__delattr__` instead of functions
  compiled from source per class (`share_dataclass_methods`).
- `datetime`: CPython's `datetime.py` first defines its whole pure-Python
  implementation, then replaces every public name with the C module `_datetime`'s
  (`from _datetime import *`). The agent gets a module holding `_datetime`'s names
  directly. msgspec (its C API capsule `datetime.datetime_CAPI`) and the runtime's
  timestamps use the same types as before.
- `decimal`: msgspec's C module takes `decimal.Decimal` at import, to recognise Decimal
  values, and nothing else; importing `decimal` loads `_decimal` and `numbers`. msgspec
  is given a stand-in class while it imports; the stand-in module is then removed, so a
  later `import decimal` is the real one. What changes: msgspec in the agent treats a
  real `decimal.Decimal` as an unsupported type (the agent's messages, pod specs and
  cache hold none: shared.pods and shared.codec have no Decimal field).
- `platform`: `uuid` (which paho-mqtt and msgspec import) calls `platform.system()` at
  import, and the `platform` module is large. A placeholder answers `system()`
  and `machine()` from `os.uname()`, as `platform` does on Linux, and imports the real
  module on any other use.
- `encodings.idna`: `ssl` encodes every server name with the "idna" codec, whose module
  imports `stringprep` and `unicodedata`'s tables. A codec registered under the same
  name encodes an ASCII name as `encodings.idna` does (its fast path, the same checks and
  errors) and hands anything else (a non-ASCII name, decoding, an incremental or stream
  codec) to the real module, imported then.
"""

from __future__ import annotations

import codecs
import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

_DATETIME_ALL = ("date", "datetime", "time", "timedelta", "timezone", "tzinfo", "MINYEAR",
                 "MAXYEAR", "UTC")


def alias_datetime() -> bool:
    """Put a `datetime` module made of `_datetime`'s names into sys.modules; False if
    `datetime` is imported already or there is no `_datetime`."""
    if "datetime" in sys.modules:
        return False
    try:
        import _datetime
    except ImportError:
        return False
    if not all(hasattr(_datetime, n) for n in _DATETIME_ALL):
        return False  # not the C module of this Python's datetime.py: keep the real one
    mod = ModuleType("datetime", _datetime.__doc__)
    mod.__dict__.update((k, v) for k, v in vars(_datetime).items() if not k.startswith("__"))
    mod.__all__ = _DATETIME_ALL  # type: ignore[attr-defined]
    sys.modules["datetime"] = mod
    return True


class _PlatformPlaceholder(ModuleType):
    """`platform` until something asks it more than `system()` or `machine()`."""

    @staticmethod
    def system() -> str:
        return os.uname().sysname

    @staticmethod
    def machine() -> str:
        return os.uname().machine

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get("platform") is self:
            del sys.modules["platform"]
        real = importlib.import_module("platform")
        self.__dict__.update(vars(real))
        self.__class__ = ModuleType  # from now on the real module's namespace, plainly
        return getattr(real, attr)


def defer_platform() -> bool:
    """Put `_PlatformPlaceholder` into sys.modules; False if `platform` is imported
    already or this is not Linux (where `platform.system()` is not simply uname's)."""
    if "platform" in sys.modules or sys.platform != "linux":
        return False
    sys.modules["platform"] = _PlatformPlaceholder("platform")
    return True


def import_msgspec_without_decimal(importer: Callable[[], object] | None = None) -> bool:
    """Import msgspec with a stand-in `decimal` (see the module's docstring), by calling
    `importer` if given (the agent's start-up defers `msgspec.inspect` and imports msgspec
    that way); False, and nothing changed, if msgspec or decimal is imported already.
    (msgspec takes `uuid.UUID` the same way, but paho-mqtt imports `uuid` itself.)"""
    if "msgspec" in sys.modules or "decimal" in sys.modules:
        return False
    stand_in = ModuleType("decimal")
    stand_in.Decimal = type("Decimal", (), {  # type: ignore[attr-defined]
        "__module__": "decimal",
        "__doc__": "What msgspec in the agent knows as Decimal: never made, never received."})
    sys.modules["decimal"] = stand_in
    try:
        if importer is not None:
            importer()
        import msgspec  # noqa: F401
    finally:
        if sys.modules.get("decimal") is stand_in:
            del sys.modules["decimal"]
    return True


_real_idna: ModuleType | None = None


def _idna() -> ModuleType:
    global _real_idna
    if _real_idna is None:
        sys.modules.pop("encodings.idna", None)
        _real_idna = importlib.import_module("encodings.idna")
    return _real_idna


def _encode(text: Any, errors: str = "strict") -> tuple[bytes, int]:
    """`encodings.idna.Codec().encode` for an ASCII name (its fast path, verbatim in
    effect); the real codec for anything else."""
    if errors == "strict" and isinstance(text, str) and text.isascii():
        if not text:
            return b"", 0
        result = text.encode("ascii")
        labels = result.split(b".")
        for label in labels[:-1]:
            if not 0 < len(label) < 64:
                raise UnicodeError("label empty or too long")
        if len(labels[-1]) >= 64:
            raise UnicodeError("label too long")
        return result, len(text)
    return _idna().Codec().encode(text, errors)


def _decode(data: Any, errors: str = "strict") -> tuple[str, int]:
    return _idna().Codec().decode(data, errors)


def _deferred(kind: str) -> type:
    """A class whose instances are the real module's `kind` (IncrementalEncoder, ...)."""

    class Deferred:
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            return getattr(_idna(), kind)(*args, **kwargs)

    Deferred.__name__ = Deferred.__qualname__ = kind
    return Deferred


def _idna_entry() -> codecs.CodecInfo:
    return codecs.CodecInfo(
        name="idna", encode=_encode, decode=_decode,
        incrementalencoder=_deferred("IncrementalEncoder"),
        incrementaldecoder=_deferred("IncrementalDecoder"),
        streamwriter=_deferred("StreamWriter"), streamreader=_deferred("StreamReader"))


def ascii_idna_first() -> bool:
    """Make the "idna" codec the ASCII-first one above, for what looks it up from now on;
    False if `encodings.idna` is imported already (then the codec is cached as it is)."""
    if "encodings.idna" in sys.modules:
        return False
    placeholder = ModuleType("encodings.idna")
    placeholder.getregentry = _idna_entry  # type: ignore[attr-defined]
    # `encodings.search_function` imports encodings.<name> and calls its getregentry();
    # codecs caches the entry, so the placeholder is needed for the first lookup only.
    sys.modules["encodings.idna"] = placeholder
    try:
        codecs.lookup("idna")
    finally:
        if sys.modules.get("encodings.idna") is placeholder:
            del sys.modules["encodings.idna"]
    return True


def _names(tuple_str: str) -> tuple[str, ...]:
    """The field names in dataclasses' `_tuple_str` text: '(self.a,self.b,)' or '()'."""
    return tuple(part.split(".", 1)[1] for part in tuple_str.strip("()").split(",") if part)


def share_dataclass_methods() -> bool:
    """Make `dataclasses` give each class closures of shared functions for `__repr__`,
    `__eq__` (and the order methods), `__hash__`, and a frozen class's `__setattr__` and
    `__delattr__`, in place of a function compiled from source for each (its own code
    object: about 1 KiB a method, 4-6 methods a class, ~75 classes in the agent). Same
    results, errors and messages as the compiled ones (tests/edgecore/
    test_edge_lean_imports.py compares them); `__init__` stays compiled per class.
    CPython 3.11's dataclasses only (its private helpers, checked by name); False, and
    nothing changed, elsewhere."""
    import dataclasses as dc
    import operator

    helpers = ("_repr_fn", "_cmp_fn", "_hash_fn", "_frozen_get_del_attr", "_tuple_str",
               "_recursive_repr")
    if sys.version_info[:2] != (3, 11) or not all(hasattr(dc, n) for n in helpers):
        return False
    if getattr(dc, "_edgefed_shared", False):
        return True
    frozen_error = dc.FrozenInstanceError
    ops = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
           ">": operator.gt, ">=": operator.ge}

    def repr_fn(fields: list[Any], globals: dict[str, Any]) -> Any:
        names = tuple(f.name for f in fields)

        def __repr__(self: Any) -> str:
            return (self.__class__.__qualname__ + "("
                    + ", ".join([f"{n}={getattr(self, n)!r}" for n in names]) + ")")

        return dc._recursive_repr(__repr__)  # type: ignore[attr-defined]

    def cmp_fn(name: str, op: str, self_tuple: str, other_tuple: str,
               globals: dict[str, Any]) -> Any:
        names, compare = _names(self_tuple), ops[op]

        def cmp(self: Any, other: Any) -> Any:
            if other.__class__ is self.__class__:
                return compare(tuple([getattr(self, n) for n in names]),
                               tuple([getattr(other, n) for n in names]))
            return NotImplemented

        cmp.__name__ = cmp.__qualname__ = name
        return cmp

    def hash_fn(fields: list[Any], globals: dict[str, Any]) -> Any:
        names = tuple(f.name for f in fields)

        def __hash__(self: Any) -> int:
            return hash(tuple([getattr(self, n) for n in names]))

        return __hash__

    def frozen_get_del_attr(cls: type, fields: list[Any], globals: dict[str, Any]) -> Any:
        names = tuple(f.name for f in fields)

        def __setattr__(self: Any, name: str, value: Any) -> None:
            if type(self) is cls or name in names:
                raise frozen_error(f"cannot assign to field {name!r}")
            super(cls, self).__setattr__(name, value)

        def __delattr__(self: Any, name: str) -> None:
            if type(self) is cls or name in names:
                raise frozen_error(f"cannot delete field {name!r}")
            super(cls, self).__delattr__(name)

        return __setattr__, __delattr__

    dc._repr_fn = repr_fn  # type: ignore[attr-defined]
    dc._cmp_fn = cmp_fn  # type: ignore[attr-defined]
    dc._hash_fn = hash_fn  # type: ignore[attr-defined]
    dc._frozen_get_del_attr = frozen_get_del_attr  # type: ignore[attr-defined]
    dc._edgefed_shared = True  # type: ignore[attr-defined]
    return True


def lighten_library_imports(import_msgspec: Callable[[], object] | None = None) -> list[str]:
    """All of the above, in the order they must run (datetime and platform before
    msgspec imports them); msgspec is imported here, by `import_msgspec` if given.
    Returns the names of the stand-ins put in place."""
    done = []
    if share_dataclass_methods():
        done.append("dataclasses")
    if alias_datetime():
        done.append("datetime")
    if defer_platform():
        done.append("platform")
    if import_msgspec_without_decimal(import_msgspec):
        done.append("decimal")
    if ascii_idna_first():
        done.append("encodings.idna")
    return done
