"""Read a pickle of plain data without running any of it.

CIFAR's batches ship as Python pickles: dicts of strings, lists of ints and numpy arrays.
`pickle.load` would run whatever code a planted file names. `loads` instead walks the opcodes
with `pickletools.genops` (which executes nothing) and builds only dicts, lists, tuples,
strings, numbers and numeric arrays; anything else raises `Unsafe`.
"""

from __future__ import annotations

import io
import math
import pickletools
from types import MappingProxyType
from typing import NamedTuple, TypeVar

import numpy as np

T = TypeVar("T")

# The only callables a CIFAR pickle may name: numpy's array rebuilders (protocol 5 writes
# `_frombuffer`) and dtype, and the two that Python 3 uses to write bytes at protocol 2. Each is
# interpreted here, never called.
SAFE_GLOBALS = MappingProxyType({
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "_frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "_frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
    ("builtins", "bytes"): "bytes",
    ("__builtin__", "bytes"): "bytes",
})
LITERAL_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
                         "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                         "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES",
                         "BINBYTES8", "BYTEARRAY8"})
CONSTANT_OPS = MappingProxyType({"NONE": None, "NEWTRUE": True, "NEWFALSE": False})


class _Global(NamedTuple):
    name: str


class _Array:
    """An ndarray numpy's `_reconstruct` announced; the BUILD that follows gives its bytes, and
    a memo entry that still names the announcement then yields the built array."""

    def __init__(self) -> None:
        self.built: np.ndarray | None = None


class Unsafe(Exception):
    """Something a CIFAR batch does not contain: refused rather than interpreted."""


def loads(data: bytes) -> object:
    """Interpret a pickle's opcodes, building only plain values and numeric arrays."""
    stack: list[object] = []
    marks: list[int] = []
    memo: dict[int, object] = {}

    def since_mark() -> list[object]:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        name = op.name
        if name in LITERAL_OPS:
            stack.append(arg)
        elif name in CONSTANT_OPS:
            stack.append(CONSTANT_OPS[name])
        elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
            stack.append({"EMPTY_DICT": dict, "EMPTY_LIST": list, "EMPTY_TUPLE": tuple}[name]())
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("TUPLE", "LIST", "DICT"):
            items = since_mark()
            stack.append(tuple(items) if name == "TUPLE" else items if name == "LIST"
                         else dict(zip(items[::2], items[1::2], strict=True)))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            count = int(name[-1])
            if len(stack) < count:
                raise Unsafe(f"opcode {name} on a short stack")
            items = stack[-count:]
            del stack[-count:]
            stack.append(tuple(items))
        elif name in ("APPEND", "APPENDS"):
            items = since_mark() if name == "APPENDS" else [stack.pop()]
            _typed(stack[-1], list, name).extend(items)
        elif name in ("SETITEM", "SETITEMS"):
            items = since_mark() if name == "SETITEMS" else stack[-2:]
            if name == "SETITEM":
                del stack[-2:]
            _typed(stack[-1], dict, name).update(zip(items[::2], items[1::2], strict=True))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            value = memo[arg]
            stack.append(value.built if isinstance(value, _Array) and value.built is not None
                         else value)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            module, attr = arg.split(" ", 1) if name == "GLOBAL" else stack[-2:]
            if name == "STACK_GLOBAL":
                del stack[-2:]
            if not isinstance(module, str) or not isinstance(attr, str) \
                    or (module, attr) not in SAFE_GLOBALS:
                raise Unsafe(f"global {str(module)[:80]}.{str(attr)[:80]}")
            stack.append(_Global(SAFE_GLOBALS[module, attr]))
        elif name == "REDUCE":
            args = stack.pop()
            stack.append(_reduce(stack.pop(), args))
        elif name == "BUILD":
            state = stack.pop()
            stack.append(_build(stack.pop(), state))
        elif name == "STOP":
            return stack.pop()
        elif name not in ("PROTO", "FRAME"):
            raise Unsafe(f"opcode {name}")
    raise ValueError("no STOP opcode")


def _typed(obj: object, kind: type[T], op: str) -> T:
    if not isinstance(obj, kind):  # only plain lists and dicts are ever built here
        raise Unsafe(f"opcode {op} on a {type(obj).__name__}")
    return obj


def _reduce(func: object, args: object) -> object:
    """The result of calling one of SAFE_GLOBALS, computed here without calling it."""
    if isinstance(func, _Global) and type(args) is tuple:
        if func.name == "_reconstruct" and args and isinstance(args[0], _Global) \
                and args[0].name == "ndarray":
            return _Array()
        if func.name == "_frombuffer" and len(args) == 4 and isinstance(args[3], str) \
                and args[3] in ("C", "F"):
            return _array(args[0], args[1], args[2], args[3] == "F")
        if func.name == "dtype" and args and isinstance(args[0], str) and len(args[0]) <= 4:
            dtype = np.dtype(args[0])
            if dtype.kind in "biuf":
                return dtype
        if func.name == "encode" and len(args) == 2 and isinstance(args[0], str) \
                and isinstance(args[1], str) and args[1] in ("latin1", "latin-1"):
            return args[0].encode("latin1")
        if func.name == "bytes" and not args:
            return b""
    raise Unsafe(f"REDUCE of {getattr(func, 'name', type(func).__name__)}")


def _build(obj: object, state: object) -> object:
    """Apply BUILD's state to a dtype (its byte order) or to an announced array (its bytes)."""
    if isinstance(obj, np.dtype) and type(state) is tuple and len(state) > 1:
        order = state[1] if isinstance(state[1], str) else ""
        return obj.newbyteorder(order) if order in ("<", ">") else obj
    if isinstance(obj, _Array) and obj.built is None and type(state) is tuple \
            and len(state) == 5:
        _, shape, dtype, fortran, raw = state
        raw = raw.encode("latin1") if isinstance(raw, str) else raw  # Python 2 wrote str
        obj.built = _array(raw, dtype, shape, bool(fortran))
        return obj.built
    raise Unsafe(f"BUILD of {type(obj).__name__}")


def _array(raw: object, dtype: object, shape: object, fortran: bool) -> np.ndarray:
    if isinstance(dtype, np.dtype) and isinstance(raw, bytes | bytearray) \
            and type(shape) is tuple and all(type(n) is int and n >= 0 for n in shape) \
            and math.prod(shape) * dtype.itemsize == len(raw):
        return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")
    raise Unsafe("an array whose bytes do not match its shape")
