"""A restricted unpickler for network pickles we must read but must not trust.

Nothing named in the pickle is ever imported. A global is either
- one of a few safe callables (tensor and storage rebuilding, plain containers), replaced by
  our own implementation;
- StyleGAN's `persistence._reconstruct_persistent_obj`, replaced by a builder of an inert
  `PersistentRecord` (the embedded `module_src` is kept as text and never executed);
- a class from a data namespace (`torch.nn.modules`, `omegaconf`, `dnnlib`, the StyleGAN
  code's own `training`/`torch_utils`), rebuilt as an inert `Record` that only holds state;
- anything else: a `RefusedGlobal` that may sit in the data as a reference, but raises
  `UnsafePickleError` naming the global the moment the pickle tries to call or build it.

What a load allocates is bounded by the file's size. Opcodes build at most one object each from
bytes the file carries, and no read asks for more than the file has left, so a length field
cannot allocate what the file does not hold. The allowed constructors are what could amplify a
small file (one object called again and again through the memo), so each call, and each BUILD,
is charged what it may allocate before it runs, and one load may spend at most
`2 × file size + 1 MiB` (protocol 2 spells bytes as latin-1 text, so an honest file's bytes are
built twice: as bytes, then as a storage):
- `bytearray(n)`: n; bytes from text, embedded storages, numpy arrays: their length;
- copies of containers or text (`list`, `tuple`, `set`, `dict`, ..., and records, which keep
  their arguments): 64 bytes an item; tensor views: 16 bytes a dimension;
- an embedded storage (torch's legacy `torch.save` of one storage, what `Storage.__reduce__`
  writes) is parsed without torch first and must hold every byte it declares; a tensor view must
  lie inside its storage (torch would grow the storage to fit it); zip or tar embeddings, whose
  entries could be compressed, are refused;
- scalar constructors (`str`, `int`, ...) take scalars only: `str` of a list that shares itself
  n levels deep would be 2**n long.
Overspending raises `UnsafePickleError` naming the file, the constructor and the bytes.

`load` builds torch tensors (storages through `torch.load(weights_only=True)`); `check` reads a
file the same way without torch, building no tensor, for `verify`.
"""
from __future__ import annotations

import codecs
import collections
import hashlib
import io
import os
import pickle
import struct
import sys
from typing import Any, BinaryIO

SLACK = 1 << 20           # bytes every load may allocate beyond twice the file's size
_ITEM = 64                # bytes charged per item of a copied container: a reference and a hash slot, rounded up
_DIM = 16                 # bytes per dimension of a tensor view: its size and stride


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle tried to call or build something outside the allow-list."""


# ---------------------------------------------------------------- inert objects


class Record:
    """An object of class `class_path`, rebuilt as plain data: its code never ran."""

    class_path = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<Record {self.class_path}>"


class DictRecord(dict):
    """A dict subclass (e.g. dnnlib.EasyDict) rebuilt as a plain dict that remembers its class."""

    class_path = "?"

    def __setstate__(self, state):
        if state:
            self.update(state)


class PersistentRecord:
    """A StyleGAN `persistence` object: class name, state and a digest of its embedded source."""

    def __init__(self, class_name: str, version: int, state: dict, module_src: str):
        self.class_name = class_name
        self.version = version
        self.state = state
        self.module_src_sha256 = hashlib.sha256(module_src.encode("utf-8")).hexdigest()
        self.module_src_chars = len(module_src)

    @property
    def class_path(self) -> str:
        return f"<persistent>.{self.class_name}"

    def __repr__(self) -> str:
        return f"<PersistentRecord {self.class_name}>"


class RefusedGlobal:
    """A global outside the allow-list: inert as a reference, refused when used."""

    path = "?"

    def __new__(cls, *args, **kwargs):
        raise UnsafePickleError(f"refused to call or build global {cls.path!r}: not on the allow-list")


class EmbeddedStorage:
    """A storage embedded by `Storage.__reduce__`, checked to hold what it declares; built on first use."""

    def __init__(self, data: bytes, type_name: str, numel: int):
        self.data = data
        self.type_name = type_name
        self.numel = numel
        self._built = None

    def to_torch(self):
        """The storage, through torch's weights-only loader; built once, shared by every view."""
        if self._built is None:
            import torch

            self._built = torch.load(io.BytesIO(self.data), weights_only=True, map_location="cpu")
        return self._built

    def __repr__(self) -> str:
        return f"<EmbeddedStorage {self.type_name}[{self.numel}]>"


class TensorView:
    """A tensor as `_rebuild_tensor_v2` describes it, checked to lie inside its storage."""

    def __init__(self, storage: EmbeddedStorage, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def to_torch(self):
        import torch

        return torch._utils._rebuild_tensor_v2(self.storage.to_torch(), self.offset, self.size, self.stride, False,
                                               collections.OrderedDict())

    def __repr__(self) -> str:
        return f"<TensorView {self.storage.type_name} {self.size}>"


# ---------------------------------------------------------------- bounded reading


class _Reader:
    """`file.read`/`readline` that never ask for more than the file has left: a length field in
    the pickle cannot make the reader allocate bytes the file does not hold."""

    def __init__(self, file: BinaryIO, size: int):
        self._file = file
        self._left = size

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._file.readline(self._left)
        self._left -= len(line)
        return line


class _BoundedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, except that BYTEARRAY8 reads its bytes before allocating them."""

    def _load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n)
        if len(data) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


# ---------------------------------------------------------------- embedded storages

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ELEMENT_SIZES = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
                  "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
                  "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8}


class _StorageType(str):
    """A `torch.<X>Storage` global inside an embedded storage, kept as its name."""


class _LegacyPart(_BoundedUnpickler):
    """One small pickle of torch's legacy format: plain data, storage types by name, storage ids."""

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.ids: list = []

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _ELEMENT_SIZES:
            return _StorageType(name)
        raise UnsafePickleError(f"refused global {module}.{name}")

    def persistent_load(self, pid):
        self.ids.append(pid)
        return pid


def _embedded_storage(data) -> EmbeddedStorage:
    """torch.storage._load_from_bytes, checked without torch: one storage holding every byte it declares."""
    if not isinstance(data, bytes):
        _refuse("an embedded storage", f"expected bytes, got {type(data).__name__}")
    try:
        return _parse_legacy_storage(data)
    except Exception as exc:
        raise UnsafePickleError(f"refused an embedded storage: {exc}") from None


def _parse_legacy_storage(data: bytes) -> EmbeddedStorage:
    """Magic number, protocol, sys info, the storage as a persistent id, its key list, numel, raw data."""
    f = io.BytesIO(data)
    if _LegacyPart(f).load() != _LEGACY_MAGIC or _LegacyPart(f).load() != _LEGACY_PROTOCOL:
        raise ValueError("not torch's legacy format (the only one Storage.__reduce__ writes)")
    sys_info = _LegacyPart(f).load()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ValueError("only little-endian storages are read")
    reader = _LegacyPart(f)
    storage_id = reader.load()
    if len(reader.ids) != 1 or storage_id is not reader.ids[0]:
        raise ValueError("it must hold exactly one storage")
    type_name, key, numel, view = _storage_id(storage_id)
    if _LegacyPart(f).load() != [key]:
        raise ValueError(f"its key list is not [{key!r}]")
    (stored_numel,) = struct.unpack("<q", f.read(8))
    declared, held = numel * _ELEMENT_SIZES[type_name], len(data) - f.tell()
    if stored_numel != numel or declared != held:
        raise ValueError(f"it declares {declared} bytes ({numel} × {type_name}) but holds {held}")
    return EmbeddedStorage(data, type_name, _view_numel(view, numel))


def _storage_id(value) -> tuple[str, str, int, Any]:
    """('storage', storage type, key, location, numel, view metadata) -> type, key, numel, view."""
    if not (isinstance(value, tuple) and len(value) == 6 and value[0] == "storage"):
        raise ValueError(f"unexpected storage id {value!r}")
    _, type_name, key, location, numel, view = value
    if not isinstance(type_name, _StorageType) or not isinstance(key, str) or not isinstance(location, str):
        raise ValueError(f"unexpected storage id {value!r}")
    if type(numel) is not int or numel < 0:
        raise ValueError(f"storage size {numel!r} is not a count")
    return type_name, key, numel, view


def _view_numel(view, numel: int) -> int:
    """Elements a storage view (view key, offset, size) of a `numel`-element root exposes."""
    if view is None:
        return numel
    if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int and v >= 0 for v in view[1:])
            and view[1] + view[2] <= numel):
        raise ValueError(f"storage view {view!r} is not inside its {numel}-element root")
    return view[2]


# ---------------------------------------------------------------- safe callables


def _refuse(path: str, why: str):
    raise UnsafePickleError(f"refused {path}: {why}")


def _check_ints(path: str, name: str, value) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, int) for v in value):
        _refuse(path, f"{name} must be a tuple of ints, got {value!r}")


def _check_no_hooks(path: str, hooks) -> None:
    if hooks is not None and (not isinstance(hooks, dict) or hooks):
        _refuse(path, "tensor backward hooks are not allowed")


def _check_inside(path: str, numel: int, offset: int, size: tuple, stride: tuple) -> None:
    """A view must lie inside its storage: torch would grow the storage to fit it."""
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        _refuse(path, f"malformed view: offset {offset}, size {size}, stride {stride}")
    if 0 in size:
        return
    end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if end > numel:
        _refuse(path, f"a view reaching element {end} of a storage of {numel} elements")


def _tensor_view(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                 metadata=None) -> TensorView:
    """torch._utils._rebuild_tensor_v2 (and _rebuild_tensor), checked; builds nothing (what `check` reads)."""
    path = "torch._utils._rebuild_tensor_v2"
    if not isinstance(storage, EmbeddedStorage):
        _refuse(path, f"storage must come from an embedded storage, got {type(storage).__name__}")
    if not isinstance(storage_offset, int):
        _refuse(path, "storage offset must be an int")
    size, stride = tuple(size), tuple(stride)
    _check_ints(path, "size", size)
    _check_ints(path, "stride", stride)
    _check_no_hooks(path, backward_hooks)
    _check_inside(path, storage.numel, storage_offset, size, stride)
    return TensorView(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(*args, **kwargs):
    """What `load` reads: the checked view, as a torch tensor."""
    return _tensor_view(*args, **kwargs).to_torch()


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(value, TensorView) or (torch is not None and isinstance(value, torch.Tensor))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not _is_tensor(data):
        _refuse("torch._utils._rebuild_parameter", "data must be a tensor")
    _check_no_hooks("torch._utils._rebuild_parameter", backward_hooks)
    return data


_PLAIN_TENSOR_TYPES = ("torch.Tensor", "torch.nn.parameter.Parameter")


def _rebuild_from_type_v2(func, new_type, args, state):
    """A tensor pickled with Python attributes: the plain tensor, its attributes dropped."""
    if func not in (_rebuild_tensor_v2, _tensor_view) or getattr(new_type, "path", None) not in _PLAIN_TENSOR_TYPES:
        _refuse("torch._tensor._rebuild_from_type_v2", "only plain tensors and parameters are allowed")
    return func(*args)


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding != "latin1":
        _refuse("_codecs.encode", "only the latin1 bytes encoding of protocol 2 is allowed")
    return codecs.encode(text, "latin1")


_SAFE_FACTORIES = (None, dict, list, set, tuple, int, float, str)


def _defaultdict(default_factory=None, *args):
    if default_factory not in _SAFE_FACTORIES:
        _refuse("collections.defaultdict", f"default factory {default_factory!r} is not allowed")
    return collections.defaultdict(default_factory, *args)


def _reconstructor(cls, base, state):
    """copyreg._reconstructor (protocols 0 and 1) for inert classes only."""
    if isinstance(cls, type) and issubclass(cls, (Record, DictRecord)) and base in (object, dict):
        obj = cls.__new__(cls)
        if state:
            obj.__setstate__(state)
        return obj
    name = getattr(cls, "path", getattr(cls, "__name__", repr(cls)))
    _refuse("copyreg._reconstructor", f"cannot rebuild {name!r}")


def _newobj(cls, *args):
    if isinstance(cls, type) and issubclass(cls, (Record, DictRecord, RefusedGlobal)):
        return cls.__new__(cls, *args)
    _refuse("copyreg.__newobj__", f"cannot build {cls!r}")


def _persistent_record(meta) -> PersistentRecord:
    """Inert replacement for persistence._reconstruct_persistent_obj: never runs module_src."""
    path = "persistence._reconstruct_persistent_obj"
    if not isinstance(meta, dict):
        _refuse(path, "meta must be a dict")
    missing = {"type", "version", "module_src", "class_name", "state"} - set(meta)
    if missing:
        _refuse(path, f"meta lacks {sorted(missing)}")
    if meta["type"] != "class" or not isinstance(meta["class_name"], str):
        _refuse(path, f"unsupported persistent object type {meta['type']!r}")
    if not isinstance(meta["module_src"], str) or not isinstance(meta["state"], dict):
        _refuse(path, f"module_src must be text and state a dict, got {type(meta['module_src']).__name__}, {type(meta['state']).__name__}")
    return PersistentRecord(meta["class_name"], meta["version"], meta["state"], meta["module_src"])


class NumpyDType(Record):
    """numpy.dtype(code, align, copy) and its BUILD state, kept inert until materialised."""

    class_path = "numpy.dtype"

    def to_numpy(self):
        import numpy as np

        code = self.args[0] if self.args else None
        if not isinstance(code, str) or np.dtype(code).hasobject:
            _refuse("numpy.dtype", f"only plain numeric dtypes are allowed, got {code!r}")
        dtype = np.dtype(code)
        if isinstance(self.state, tuple) and len(self.state) > 1 and self.state[1] in "<>":
            dtype = dtype.newbyteorder(self.state[1])
        return dtype


class NumpyArray(Record):
    """numpy.core.multiarray._reconstruct(ndarray, shape, typecode) plus its BUILD state."""

    class_path = "numpy.ndarray"

    def to_numpy(self):
        import numpy as np

        if not (isinstance(self.state, tuple) and len(self.state) == 5):
            _refuse("numpy.ndarray", "unexpected array state")
        _version, shape, dtype, fortran, raw = self.state
        if not isinstance(dtype, NumpyDType) or not isinstance(raw, (bytes, bytearray)):
            _refuse("numpy.ndarray", "array data must be raw bytes of a plain dtype")
        array = np.frombuffer(raw, dtype=dtype.to_numpy())
        return array.reshape(shape, order="F" if fortran else "C").copy()


def _np_scalar(dtype, data=None):
    import numpy as np

    if not isinstance(dtype, NumpyDType) or not isinstance(data, (bytes, bytearray)):
        _refuse("numpy scalar", "only plain numeric scalars are allowed")
    return np.frombuffer(data, dtype=dtype.to_numpy())[0]


def _np_reconstruct(cls, shape, typecode):
    if getattr(cls, "path", None) not in ("numpy.ndarray",):
        _refuse("numpy _reconstruct", f"only numpy.ndarray is allowed, got {cls!r}")
    return NumpyArray.__new__(NumpyArray)


# ---------------------------------------------------------------- what a call may allocate
# Each takes the constructor's pickled name and its arguments, returns bytes, or refuses.

_SIZED = (list, tuple, dict, set, frozenset, str, bytes, bytearray)
_SCALARS = (str, int, float, complex, type(None))
_LATIN1 = ("latin-1", "latin1")


def _nothing(path: str, args: tuple) -> int:
    return 0


def _copies(path: str, args: tuple) -> int:
    """A copy of each container or text argument, an item per element or character."""
    return _ITEM * sum(len(a) for a in args if isinstance(a, _SIZED))


def _references(path: str, args: tuple) -> int:
    """A record keeps its argument tuple."""
    return _ITEM * len(args)


def _buffer(path: str, args: tuple) -> int:
    """Bytes made from text or bytes arguments (latin-1 bytes, a storage, a bytearray): their length."""
    return sum(len(a) for a in args if isinstance(a, (str, bytes, bytearray)))


def _bytearray(path: str, args: tuple) -> int:
    if args and isinstance(args[0], int):
        return max(args[0], 0)
    if len(args) > 1 and args[1] not in _LATIN1:
        _refuse(path, f"text must be latin-1 (protocol 2's spelling of bytes), not {args[1]!r}")
    return sum(len(a) for a in args[:1] if isinstance(a, _SIZED))


def _scalar(path: str, args: tuple) -> int:
    for arg in args:
        if not isinstance(arg, _SCALARS):
            _refuse(path, f"takes scalars, not a {type(arg).__name__}")
    return _buffer(path, args)


def _view(path: str, args: tuple) -> int:
    """_rebuild_tensor_v2(storage, offset, size, ...): torch copies size and stride."""
    return _DIM * len(args[2]) if len(args) > 2 and isinstance(args[2], _SIZED) else 0


def _view_from_type(path: str, args: tuple) -> int:
    return _view(path, args[2]) if len(args) > 2 and isinstance(args[2], tuple) else 0


# (module, name) -> (replacement, what a call may allocate). Names as pickled: protocol-2
# streams use the Python 2 spellings. The tensor rebuilds depend on the mode (see find_class).
_SAFE_CALLABLES = {
    ("collections", "OrderedDict"): (collections.OrderedDict, _copies),
    ("collections", "defaultdict"): (_defaultdict, _copies),
    ("builtins", "set"): (set, _copies),
    ("builtins", "frozenset"): (frozenset, _copies),
    ("builtins", "bytearray"): (bytearray, _bytearray),
    ("builtins", "complex"): (complex, _scalar),
    ("builtins", "dict"): (dict, _copies),
    ("builtins", "list"): (list, _copies),
    ("builtins", "tuple"): (tuple, _copies),
    ("builtins", "object"): (object, _nothing),
    ("builtins", "int"): (int, _scalar),
    ("builtins", "float"): (float, _scalar),
    ("builtins", "str"): (str, _scalar),
    ("builtins", "bool"): (bool, _scalar),
    ("_codecs", "encode"): (_codecs_encode, _buffer),
    ("copyreg", "_reconstructor"): (_reconstructor, _copies),
    ("copyreg", "__newobj__"): (_newobj, _references),
    ("torch._utils", "_rebuild_parameter"): (_rebuild_parameter, _nothing),
    ("torch._utils", "_rebuild_parameter_with_state"): (_rebuild_parameter, _nothing),
    ("torch._tensor", "_rebuild_from_type_v2"): (_rebuild_from_type_v2, _view_from_type),
    ("torch.storage", "_load_from_bytes"): (_embedded_storage, _buffer),
    ("torch", "Size"): (tuple, _copies),
    ("numpy", "dtype"): (NumpyDType, _references),
    ("numpy.core.multiarray", "scalar"): (_np_scalar, _nothing),
    ("numpy._core.multiarray", "scalar"): (_np_scalar, _nothing),
    ("numpy.core.multiarray", "_reconstruct"): (_np_reconstruct, _nothing),
    ("numpy._core.multiarray", "_reconstruct"): (_np_reconstruct, _nothing),
}
_TENSOR_REBUILDS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}
_COSTS = {replacement: (f"{module}.{name}", cost)
          for (module, name), (replacement, cost) in reversed(_SAFE_CALLABLES.items())}
_COSTS.update({_rebuild_tensor_v2: ("torch._utils._rebuild_tensor_v2", _view),
               _tensor_view: ("torch._utils._rebuild_tensor_v2", _view)})
_PY2_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# Classes whose instances are rebuilt as inert records; their code is never imported.
_RECORD_NAMESPACES = ("torch.nn.modules.", "omegaconf.", "dnnlib.", "training.", "torch_utils.")
_DICT_CLASSES = {"dnnlib.util.EasyDict", "dnnlib.EasyDict", "easydict.EasyDict"}
_TORCH_DTYPES = {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8",
                 "bool", "half", "float", "double", "long", "int", "short"}


def _state_cost(inst, state) -> int:
    """What BUILD allocates: a DictRecord copies the items; a NumpyArray's bytes are copied when materialised."""
    if isinstance(inst, DictRecord):
        return _copies("", (state,))
    if isinstance(inst, NumpyArray) and isinstance(state, tuple):
        return _buffer("", state)
    return 0


# ---------------------------------------------------------------- the unpickler


class SafeUnpickler(_BoundedUnpickler):
    """Unpickler whose globals resolve to safe callables, inert records or refusals.

    Built on the pure-Python unpickler so that BUILD can be restricted too (state may only be set
    on inert records, never on a callable or a class) and so that every call can be charged to
    the file's allocation budget first. `tensors=False` builds `TensorView`s instead of torch
    tensors and never imports torch.
    """

    def __init__(self, file: BinaryIO, *, tensors: bool = True):
        start = file.tell()
        size = file.seek(0, os.SEEK_END) - start
        file.seek(start)
        super().__init__(_Reader(file, size))
        self.name = str(getattr(file, "name", "<pickle stream>"))
        self.budget = 2 * size + SLACK
        self.spent = 0
        self._tensors = tensors
        self._classes: dict[str, type] = {}

    def load(self) -> Any:
        """The unpickled object; every error names the file, refusals as UnsafePickleError."""
        try:
            return super().load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{self.name}: {exc}") from None
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise pickle.UnpicklingError(f"{self.name}: not a readable pickle: {why}") from exc

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_NAMES.get(module, module)
        path = f"{module}.{name}"
        if (module, name) in _TENSOR_REBUILDS:
            return _rebuild_tensor_v2 if self._tensors else _tensor_view
        if (module, name) in _SAFE_CALLABLES:
            return _SAFE_CALLABLES[(module, name)][0]
        if name == "_reconstruct_persistent_obj" and module.split(".")[-1] == "persistence":
            return _persistent_record
        if module == "torch" and name in _TORCH_DTYPES:
            if not self._tensors:
                return path
            import torch

            return getattr(torch, name)
        if path not in self._classes:
            self._classes[path] = self._make_class(path)
        return self._classes[path]

    @staticmethod
    def _make_class(path: str) -> type:
        if path in _DICT_CLASSES:
            base = DictRecord
        elif path.startswith(_RECORD_NAMESPACES):
            base = Record
        else:
            return type(path.rsplit(".", 1)[-1], (RefusedGlobal,), {"path": path})
        return type(path.rsplit(".", 1)[-1], (base,), {"class_path": path})

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refused persistent id {pid!r}: not used by network pickles")

    def _charge(self, path: str, nbytes: int) -> None:
        """Spend `nbytes` of this load's budget before `path` allocates them, or refuse."""
        if self.spent + nbytes > self.budget:
            raise UnsafePickleError(f"refused {path}: it would allocate {nbytes} bytes, beyond the budget of "
                                    f"{self.budget} bytes (2 × the file's size + {SLACK}; {self.spent} spent)")
        self.spent += nbytes

    def _charge_call(self, func, args: tuple) -> None:
        if not callable(func):
            raise pickle.UnpicklingError(f"cannot call a {type(func).__name__}")
        if isinstance(func, type) and issubclass(func, (Record, DictRecord)):
            path, cost = func.class_path, _references
        else:
            path, cost = _COSTS.get(func, (getattr(func, "path", repr(func)), _nothing))
        self._charge(path, cost(path, args))

    def _pop(self, kind: type):
        value = self.stack.pop()
        if not isinstance(value, kind):
            raise pickle.UnpicklingError(f"expected a {kind.__name__} of arguments, got {type(value).__name__}")
        return value

    def _load_reduce(self):
        args = self._pop(tuple)
        self._charge_call(self.stack[-1], args)
        self.stack[-1] = self.stack[-1](*args)

    def _load_newobj(self):
        args = self._pop(tuple)
        self._charge_call(self.stack[-1], args)
        cls = self.stack.pop()
        self.append(cls.__new__(cls, *args))

    def _load_newobj_ex(self):
        kwargs = self._pop(dict)
        args = self._pop(tuple)
        self._charge_call(self.stack[-1], args + tuple(kwargs.values()))
        cls = self.stack.pop()
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass, args):
        self._charge_call(klass, tuple(args))
        super()._instantiate(klass, args)

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, (Record, DictRecord)):
            raise UnsafePickleError(f"refused to set state on {type(inst).__name__} {inst!r}")
        self._charge(inst.class_path, _state_cost(inst, state))
        inst.__setstate__(state)

    dispatch = dict(_BoundedUnpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BUILD[0]] = _load_build


def load(file: BinaryIO) -> Any:
    """Unpickle `file` (seekable) with the restrictions above; tensors come out as torch tensors."""
    return SafeUnpickler(file).load()


def check(path: str | os.PathLike) -> None:
    """Read `path` as `load` would, without torch and building no tensor: raise what `load` would refuse."""
    with open(path, "rb") as f:
        SafeUnpickler(f, tensors=False).load()
