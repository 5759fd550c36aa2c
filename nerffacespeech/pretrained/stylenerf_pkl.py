"""Read an official StyleNeRF network pickle without running any of its code.

The pickle (written by StyleGAN's training loop) is `dict(G, D, G_ema, augment_pipe,
training_set_kwargs)`; each network is a `persistence` object whose record holds the embedded
module source and the module's `__dict__` (`_parameters`, `_buffers`, `_modules`, `_init_kwargs`,
...). `safe_pickle` turns those records into inert data; this module walks them into flat state
dicts (`synthesis.b32.conv0.weight`, like `Module.state_dict()`) and plain-data init kwargs, and
exports safetensors through a name map.

Like `safe_pickle`, it allocates in proportion to the file: plain-data conversion keeps what the
pickle shares shared, and a network's flattened names (a shared submodule counts at every path,
as in `state_dict()`) may total at most as many characters as the file has bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from . import safe_pickle
from .name_map import MappingReport, Rule, map_state_dict, save_safetensors
from .verify import sha256_of
from .safe_pickle import DictRecord, NumpyArray, NumpyDType, PersistentRecord, Record, RefusedGlobal

NETWORKS = ("G_ema", "G", "D")


class NetworkPickleError(ValueError):
    """The pickle does not have the structure of a StyleGAN/StyleNeRF network snapshot."""


@dataclass
class Network:
    """One network of the snapshot, as data."""

    class_name: str
    state_dict: dict[str, torch.Tensor]
    init_args: list
    init_kwargs: dict
    module_classes: dict[str, str] = field(default_factory=dict)   # "" / "synthesis.b32" -> class


@dataclass
class NetworkSnapshot:
    networks: dict[str, Network]
    extras: dict[str, Any]       # the other top-level entries as plain data (training_set_kwargs, ...)


def read(path: str | Path, names: Sequence[str] = NETWORKS) -> NetworkSnapshot:
    """Load the networks `names` (those present) from a network pickle, safely."""
    with open(path, "rb") as f:
        top = safe_pickle.load(f)
    if not isinstance(top, dict):
        raise NetworkPickleError(f"{path}: top level is {type(top).__name__}, expected a dict of networks")
    found = [name for name in names if top.get(name) is not None]
    if not found:
        raise NetworkPickleError(f"{path}: none of {list(names)} in it (has {sorted(map(str, top))})")
    size = Path(path).stat().st_size
    networks = {name: network(top[name], f"{path}: {name}", size) for name in found}
    extras = to_plain({str(k): v for k, v in top.items() if k not in NETWORKS and not _is_module(v)})
    return NetworkSnapshot(networks, extras)


def network(record: Any, name: str, max_name_chars: int) -> Network:
    """Flatten one module record (persistent or torch.nn) into a Network.

    `name` is how errors call it; its flattened names may total `max_name_chars` characters
    (`read` allows the file's size).
    """
    if not _is_module(record):
        raise NetworkPickleError(f"{name} is {record!r}, not a module record")
    state = _module_dict(record, name)
    flat = _Flat(name, max_name_chars)
    _walk(record, "", flat)
    return Network(
        class_name=_class_name(record),
        state_dict=flat.tensors,
        init_args=to_plain(list(state.get("_init_args", ()))),
        init_kwargs=to_plain(dict(state.get("_init_kwargs") or {})),
        module_classes=flat.classes,
    )


@dataclass
class _Flat:
    """What walking a network produces, and how many characters of names it may still add."""

    where: str
    chars_left: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)

    def spend(self, name: str) -> str:
        self.chars_left -= len(name)
        if self.chars_left < 0:
            raise NetworkPickleError(f"{self.where}: its state-dict names (a shared submodule counts at "
                                     "every path) outgrow the file: more characters than it has bytes")
        return name


def _is_module(obj) -> bool:
    return isinstance(obj, (PersistentRecord, Record)) and isinstance(obj.state, dict) and "_modules" in obj.state


def _class_name(record) -> str:
    return record.class_name if isinstance(record, PersistentRecord) else record.class_path


def _module_dict(record, where: str) -> dict:
    state = record.state
    for key in ("_parameters", "_buffers", "_modules"):
        if not isinstance(state.get(key), dict):
            raise NetworkPickleError(f"{where or 'network'}: module state lacks a {key} mapping")
    return state


def _walk(record, prefix: str, flat: _Flat) -> None:
    """Module.state_dict() semantics: parameters, then persistent buffers, then children."""
    where = prefix.rstrip(".")
    state = _module_dict(record, where)
    flat.classes[flat.spend(where)] = _class_name(record)
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, value in state[kind].items():
            if value is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise NetworkPickleError(f"{prefix}{name}: {kind[1:-1]} is {type(value).__name__}, not a tensor")
            flat.tensors[flat.spend(prefix + name)] = value
    for name, child in state["_modules"].items():
        if child is None:
            continue
        if not _is_module(child):
            raise NetworkPickleError(f"{prefix}{name}: submodule is {child!r}, not a module record")
        _walk(child, f"{prefix}{name}.", flat)


def to_plain(obj: Any, _memo: dict | None = None) -> Any:
    """Records to plain Python data (omegaconf configs to dicts/lists); tensors stay tensors.

    Each object is converted once, so what the pickle shares stays shared (a list holding itself
    twice n levels deep stays n lists, not 2**n), and a reference back into a cycle is "<cycle>".
    """
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype)):
        return obj
    memo = {} if _memo is None else _memo
    if id(obj) not in memo:
        memo[id(obj)] = "<cycle>"                  # what references met while converting obj get
        memo[id(obj)] = _convert(obj, memo)
    return memo[id(obj)]


def _convert(obj: Any, memo: dict) -> Any:
    if isinstance(obj, (NumpyArray, NumpyDType)):
        return obj.to_numpy()
    if hasattr(obj, "item") and type(obj).__module__ == "numpy":
        return obj.item()
    if isinstance(obj, (dict, DictRecord)):
        return {to_plain(k, memo): to_plain(v, memo) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_plain(v, memo) for v in obj)
    if isinstance(obj, (list, set, frozenset)):
        return [to_plain(v, memo) for v in obj]
    if isinstance(obj, type) and issubclass(obj, RefusedGlobal):
        return {"__global__": obj.path}
    if isinstance(obj, PersistentRecord):
        return {"__persistent__": obj.class_name}
    if isinstance(obj, Record) and obj.class_path.startswith("omegaconf.") and isinstance(obj.state, dict):
        return _omegaconf(obj, memo)
    if isinstance(obj, Record):
        return {"__record__": obj.class_path, "state": to_plain(obj.state, memo)}
    return {"__object__": type(obj).__name__}


def _omegaconf(record: Record, memo: dict) -> Any:
    """DictConfig/ListConfig keep children in `_content`, value nodes their value in `_val`."""
    state = record.state
    if "_content" in state:
        return to_plain(state["_content"], memo)
    if "_val" in state:
        return to_plain(state["_val"], memo)
    return {"__record__": record.class_path}


def export(snapshot_path: str | Path, out_path: str | Path, target_shapes: Mapping[str, Sequence[int]],
           rules: Sequence[Rule], which: str = "G_ema", allow_missing: Sequence[str] = ()) -> MappingReport:
    """Map network `which` of a pickle onto our model's names and write safetensors; raise if incomplete."""
    snapshot = read(snapshot_path, (which,))
    report = map_state_dict(snapshot.networks[which].state_dict, target_shapes, rules)
    report.require_complete(allow_missing)
    digest = sha256_of(Path(snapshot_path))
    save_safetensors(report.mapped, out_path, {"source": Path(snapshot_path).name, "source_sha256": digest,
                                               "network": which})
    return report
