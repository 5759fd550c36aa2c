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
"""
from __future__ import annotations

import codecs
import collections
import hashlib
import io
import pickle
from typing import Any, BinaryIO


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


# ---------------------------------------------------------------- safe callables


def _refuse(path: str, why: str):
    raise UnsafePickleError(f"refused {path}: {why}")


def _load_storage_from_bytes(data: bytes):
    """torch.storage._load_from_bytes, but through torch's weights-only unpickler."""
    import torch

    if not isinstance(data, (bytes, bytearray)):
        _refuse("torch.storage._load_from_bytes", f"expected bytes, got {type(data).__name__}")
    try:
        return torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(f"refused an embedded storage: {exc}") from None


def _check_ints(path: str, name: str, value) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, int) for v in value):
        _refuse(path, f"{name} must be a tuple of ints, got {value!r}")


def _check_no_hooks(path: str, hooks) -> None:
    if hooks is not None and (not isinstance(hooks, dict) or hooks):
        _refuse(path, "tensor backward hooks are not allowed")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    import torch

    path = "torch._utils._rebuild_tensor_v2"
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        _refuse(path, f"storage must come from an embedded storage, got {type(storage).__name__}")
    if not isinstance(storage_offset, int):
        _refuse(path, "storage offset must be an int")
    _check_ints(path, "size", tuple(size))
    _check_ints(path, "stride", tuple(stride))
    _check_no_hooks(path, backward_hooks)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False,
                                           collections.OrderedDict())


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    import torch

    if not isinstance(data, torch.Tensor):
        _refuse("torch._utils._rebuild_parameter", "data must be a tensor")
    _check_no_hooks("torch._utils._rebuild_parameter", backward_hooks)
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    import torch

    if func is not _rebuild_tensor_v2 or new_type not in (torch.Tensor, torch.nn.Parameter):
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
        array = np.frombuffer(bytes(raw), dtype=dtype.to_numpy())
        return array.reshape(shape, order="F" if fortran else "C").copy()


def _np_scalar(dtype, data=None):
    import numpy as np

    if not isinstance(dtype, NumpyDType) or not isinstance(data, (bytes, bytearray)):
        _refuse("numpy scalar", "only plain numeric scalars are allowed")
    return np.frombuffer(bytes(data), dtype=dtype.to_numpy())[0]


def _np_reconstruct(cls, shape, typecode):
    if getattr(cls, "path", None) not in ("numpy.ndarray",):
        _refuse("numpy _reconstruct", f"only numpy.ndarray is allowed, got {cls!r}")
    return NumpyArray.__new__(NumpyArray)


def _torch_size(*args):
    import torch

    return torch.Size(*args)


# (module, name) -> replacement. Names as pickled: protocol-2 streams use the Python 2 spellings.
_SAFE_CALLABLES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): _defaultdict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "object"): object,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "str"): str,
    ("builtins", "bool"): bool,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copyreg", "__newobj__"): _newobj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Size"): _torch_size,
    ("numpy", "dtype"): NumpyDType,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
}
_PY2_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# Classes whose instances are rebuilt as inert records; their code is never imported.
_RECORD_NAMESPACES = ("torch.nn.modules.", "omegaconf.", "dnnlib.", "training.", "torch_utils.")
_DICT_CLASSES = {"dnnlib.util.EasyDict", "dnnlib.EasyDict", "easydict.EasyDict"}
_TORCH_DTYPES = {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8",
                 "bool", "half", "float", "double", "long", "int", "short"}


class SafeUnpickler(pickle._Unpickler):
    """Unpickler whose globals resolve to safe callables, inert records or refusals.

    Built on the pure-Python unpickler so that BUILD can be restricted too: state may only be
    set on inert records, never on a callable or a class.
    """

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_NAMES.get(module, module)
        path = f"{module}.{name}"
        if (module, name) in _SAFE_CALLABLES:
            return _SAFE_CALLABLES[(module, name)]
        if name == "_reconstruct_persistent_obj" and module.split(".")[-1] == "persistence":
            return _persistent_record
        if module == "torch" and name in _TORCH_DTYPES:
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

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, (Record, DictRecord)):
            raise UnsafePickleError(f"refused to set state on {type(inst).__name__} {inst!r}")
        inst.__setstate__(state)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build


def load(file: BinaryIO) -> Any:
    """Unpickle `file` with the restrictions above."""
    return SafeUnpickler(file).load()
