"""Sharded checkpoints that are visible only when complete, and exact resume from the newest one.

Protocol (all ranks take part in `save`):
1. rank 0 checks that the free space holds another checkpoint the size of the newest one and
   creates `.step-000123.tmp-<nonce>/`; every rank writes its files (shards, per-rank RNG,
   DeepSpeed ZeRO partitions) into it;
2. the ranks agree that every write succeeded, then hash between them the files whose writers did
   not hash them as they wrote them (sha256, fsync);
3. rank 0 writes `manifest.json` (every file's size and sha256, the files each rank wrote)
   last and atomically, renames the folder to `step-000123/`, fsyncs, and rewrites `latest`.
A visible `step-*` folder is therefore complete; a kill at any instant leaves at worst a
hidden `.step-*.tmp-*` folder, which the next restore moves to `quarantine/`. A save that fails
on any rank (a full disk) removes its hidden folder and raises the same error on every rank.

Restore takes the newest checkpoint that verifies; the others are quarantined with a record of
why (`launcher.checkpoint_health`). A stage that had committed checkpoints but has none usable
stops with `NoUsableCheckpoint` instead of starting over, unless `FRESH_START` permits it.

State is a dict of adapters: `ModuleState`, `OptimizerState`, `DeepSpeedState`, `RNGState`,
or a plain JSON-able dict (progress: data position, counters), restored in place.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

import torch
import torch.distributed as dist

from launcher import checkpoint_health
from launcher.atomic import fsync_dir, write_json, write_text
from launcher.checkpoint_health import FRESH_START, QUARANTINE
from launcher.runtime import checkpoint_files, finite, reshard, rng
from launcher.runtime.checkpoint_files import Written
from launcher.runtime.context import CheckpointPolicy
from launcher.runtime.distributed import DistEnv

log = logging.getLogger(__name__)

MANIFEST, LATEST = checkpoint_health.MANIFEST, checkpoint_health.LATEST
MANIFEST_FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_UNFINISHED_DIR = re.compile(r"^\.step-\d+\.tmp-[0-9a-f]+$")
_BEING_DELETED_DIR = re.compile(r"^\.step-\d+\.deleting-[0-9a-f]+$")
_HASH_CHUNK = 8 << 20
_HASH_THREADS = 8
_NEARLY_FULL = 1 << 20        # a write that failed with less free space than this ran out of it
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# Writes this rank's files into a folder; returns each one's name, or its `Written` record when it
# was hashed and fsynced as it was written (the commit then does not read it back).
Writer = Callable[[Path], "list[str | Written]"]


def step_dirname(step: int) -> str:
    return f"step-{step:06d}"


class CheckpointSaveFailed(RuntimeError):
    """A save failed on at least one rank; raised on every rank once its unfinished folder is gone.
    The previous checkpoints and `latest` are untouched."""


class NoSpaceForCheckpoint(CheckpointSaveFailed):
    """The checkpoint does not fit: refused before writing (less free space than the newest
    checkpoint takes), or the disk filled while writing. The message names the folder, the
    bytes needed and the bytes free."""


class TrainingDiverged(CheckpointSaveFailed):
    """The weights hold NaN or infinite values: the save is refused, so the newest checkpoint
    stays the last good one. The message names the first such tensor and that checkpoint."""


class NoUsableCheckpoint(RuntimeError):
    """The stage has committed checkpoints but none of them verifies; starting over from step 0
    would silently lose its training, so it needs the operator's `FRESH_START`."""


# ---------------------------------------------------------------- state adapters


class Stateful(Protocol):
    """A piece of training state that knows how to write and read its files in a checkpoint."""

    background_ok: bool    # may its writer run in a background thread (no collectives inside)?

    def snapshot(self, name: str, env: DistEnv, copy: bool) -> Writer:
        """Take what must be saved now (copied to host memory if `copy`); return the writer."""

    def load(self, folder: Path, name: str, env: DistEnv) -> None:
        """Restore from the files `snapshot`'s writer wrote into `folder`."""


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


class HostStaging:
    """Host copies of state for async saves, in buffers reused from one save to the next.

    GPU tensors go to pinned (page-locked) buffers: the copy runs several times faster than
    into pageable memory, and reuse avoids paying the allocation at every save. A buffer is
    only rewritten by the next snapshot, which comes after the previous save's commit.
    """

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def copy(self, value: Any, key: tuple = ()) -> Any:
        """`value` (nested dicts, lists, tuples of tensors) with every tensor copied to the host."""
        if isinstance(value, torch.Tensor):
            return self._copy_tensor(key, value.detach())
        if isinstance(value, dict):
            return {k: self.copy(v, key + (k,)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.copy(v, key + (i,)) for i, v in enumerate(value))
        return value

    def _copy_tensor(self, key: tuple, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "cuda":
            return tensor.clone(memory_format=torch.contiguous_format)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._buffers[key] = buffer
        buffer.copy_(tensor, non_blocking=True)
        return buffer


def _copied_to_host(value: Any, staging: HostStaging) -> Any:
    """Copy of `value` on the host that training may go on changing the original of."""
    host = staging.copy(value)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()                 # the non-blocking copies have landed
    return host


def _on_host(value: Any) -> Any:
    """Tensors of a nested state moved to CPU (no copy for CPU tensors): for blocking saves."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_host(v) for v in value)
    return value


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as safetensors writes them (tied weights may share memory: each is written)."""
    return {key: tensor.contiguous() for key, tensor in tensors.items()}


def _torch_save_writer(state: Any, filename: str) -> Writer:
    """A writer that torch.saves `state` (already taken) as `filename`, hashed and durable."""
    return lambda folder: [checkpoint_files.torch_save(state, folder / filename)]


class ModuleState:
    """A module's parameters and buffers as safetensors, written by rank 0 (replicated modules).

    DDP and torch.compile wrappers are unwrapped, so the file loads into a bare module too.
    An EMA copy of a network is just another ModuleState.
    """

    background_ok = True

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self._staging = HostStaging()

    def snapshot(self, name: str, env: DistEnv, copy: bool) -> Writer:
        if not env.is_main:
            return lambda folder: []
        state = _unwrap(self.module).state_dict()
        finite.refuse_non_finite(name, state.items())
        tensors = _copied_to_host(state, self._staging) if copy else _contiguous(_on_host(state))

        return lambda folder: [checkpoint_files.save_safetensors(tensors, folder / f"{name}.safetensors")]

    def load(self, folder: Path, name: str, env: DistEnv) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(folder / f"{name}.safetensors"), device="cpu")
        _unwrap(self.module).load_state_dict(tensors, strict=True)


class OptimizerState:
    """Anything with state_dict/load_state_dict (optimizer, LR scheduler, GradScaler), torch.save'd.

    Rank 0 writes it for replicated state (DDP); `per_rank=True` writes one file per rank.
    Loading uses `weights_only=True`.
    """

    background_ok = True

    def __init__(self, obj: Any, per_rank: bool = False):
        self.obj = obj
        self.per_rank = per_rank
        self._staging = HostStaging()

    def _filename(self, name: str, rank: int) -> str:
        return f"{name}.rank-{rank:05d}.pt" if self.per_rank else f"{name}.pt"

    def snapshot(self, name: str, env: DistEnv, copy: bool) -> Writer:
        if not (self.per_rank or env.is_main):
            return lambda folder: []
        state = self.obj.state_dict()
        state = _copied_to_host(state, self._staging) if copy else _on_host(state)
        return _torch_save_writer(state, self._filename(name, env.rank))

    def load(self, folder: Path, name: str, env: DistEnv) -> None:
        path = folder / self._filename(name, env.rank)
        self.obj.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class RNGState:
    """Python, NumPy, torch CPU and CUDA generator states of every rank (one file per rank)."""

    background_ok = True

    def snapshot(self, name: str, env: DistEnv, copy: bool) -> Writer:
        return _torch_save_writer(rng.capture(), f"{name}.rank-{env.rank:05d}.pt")

    def load(self, folder: Path, name: str, env: DistEnv) -> None:
        manifest = read_manifest(folder)
        written_by = manifest.get("world_size", env.world_size)
        if written_by != env.world_size:
            # The streams belonged to ranks that no longer exist: derive new ones from the
            # checkpoint (rank 0's saved state) and this rank, the same in every such resume.
            origin = manifest["files"][f"{name}.rank-00000.pt"]["sha256"]
            rng.seed_derived(f"{origin}:{env.world_size}:{env.rank}")
            log.info("world size %d -> %d: rank %d's generators derived from %s", written_by, env.world_size,
                     env.rank, folder.name)
            return
        rng.restore(torch.load(folder / f"{name}.rank-{env.rank:05d}.pt", map_location="cpu", weights_only=True))


class DeepSpeedState:
    """A DeepSpeed engine (module, ZeRO-partitioned optimizer, scheduler) via its own save/load.

    Written into the checkpoint folder under the tag `name` with `save_latest=False`: DeepSpeed's
    own `latest` file is written by rank 0 without waiting for the others, so it is not used.
    Collective, so it always runs in the foreground. ZeRO-3's partition padding is zeroed first,
    so that identical runs write identical files.
    """

    background_ok = False

    def __init__(self, engine: Any):
        self.engine = engine

    def snapshot(self, name: str, env: DistEnv, copy: bool) -> Writer:
        def write(folder: Path) -> list:
            zero_partition_padding(self.engine.optimizer)    # first: ZeRO-3's padding may hold NaN garbage
            # Checked before DeepSpeed's collectives, and agreed on, so every rank skips them
            # together; the ranks whose partitions are finite leave the failure to the others.
            bad = finite.first_non_finite((key, getattr(p, "ds_tensor", p))        # ZeRO-3: this rank's part
                                          for key, p in self.engine.module.named_parameters())
            if _all_reduce_max(env, [bad is not None])[0]:
                if bad is not None:
                    raise finite.NonFiniteWeights(f"{name}.{bad} holds NaN or infinite values")
                return []
            with _WriteFailureHeld(self.engine) as writes:
                self.engine.save_checkpoint(str(folder), tag=name, client_state={}, save_latest=False)
            writes.release()
            return []       # which rank wrote which shard is DeepSpeed's business; all are hashed

        return write

    def load(self, folder: Path, name: str, env: DistEnv) -> None:
        written_by = read_manifest(folder).get("world_size", env.world_size)
        if written_by == env.world_size or not self.engine.zero_optimization():
            self._load(folder, name)          # ZeRO-0 state is replicated: any world size loads it
            return
        with reshard.universal_copy(folder, name, env) as universal:
            self.engine._config.load_universal_checkpoint = True
            try:
                self._load(universal, name)
            finally:
                self.engine._config.load_universal_checkpoint = False
        log.info("ZeRO-%d state of %s resharded from %d to %d ranks", self.engine.zero_optimization_stage(),
                 folder.name, written_by, env.world_size)

    def _load(self, folder: Path, name: str) -> None:
        path, _ = self.engine.load_checkpoint(
            str(folder), tag=name, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load tag {name!r} from {folder}")


class _WriteFailureHeld:
    """A DeepSpeed engine's file writes, with the first failure (a full disk) held back.

    DeepSpeed's save interleaves each rank's writes with collectives (ZeRO-3's all-gather of
    persistent parameters, the closing barrier). A rank whose write raised would leave them
    and hang the ranks whose writes succeeded; so while installed, a failed write is held,
    that rank's later writes are skipped, every rank runs the save's collectives to the end,
    and `release` raises the failure afterwards. The writes are the checkpoint engine's and
    rank 0's copy of the recovery scripts (DeepSpeed 0.19: `_copy_recovery_script`).
    """

    def __init__(self, engine: Any):
        self.engine = engine
        self.inner = engine.checkpoint_engine
        self.failure: BaseException | None = None

    def __enter__(self) -> "_WriteFailureHeld":
        self.engine.checkpoint_engine = self
        if hasattr(self.engine, "_copy_recovery_script"):
            self.engine._copy_recovery_script = self._held(self.engine._copy_recovery_script)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.engine.checkpoint_engine = self.inner
        self.engine.__dict__.pop("_copy_recovery_script", None)

    def release(self) -> None:
        if self.failure is not None:
            raise self.failure

    def save(self, *args: Any, **kwargs: Any) -> None:
        self._held(self.inner.save)(*args, **kwargs)

    def makedirs(self, *args: Any, **kwargs: Any) -> None:
        self._held(self.inner.makedirs)(*args, **kwargs)

    def _held(self, write: Callable) -> Callable:
        def held(*args: Any, **kwargs: Any) -> None:
            if self.failure is not None:
                return
            try:
                write(*args, **kwargs)
            except Exception as failure:
                self.failure = failure
        return held

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def zero_partition_padding(optimizer: Any) -> None:
    """Zero the elements ZeRO-3 pads each parameter's partitions with.

    DeepSpeed (0.19) splits a parameter into equal partitions, one per rank, padding where the
    world size does not divide its size: the last rank's partition, and every partition past the
    parameter's end (a 1-element bias on 4 ranks leaves 3 of them nothing but padding; its own
    `groups_padding` names the last rank's only). It allocates partitions with torch.empty and
    never writes the padding: it holds whatever the memory held (NaN too), and so do the fp32
    master partition copied from it and the optimizer state updated from that, which the
    checkpoint saves and the finite-weights check reads. No parameter ever reads these elements
    back, so zeroing them changes no result; it makes checkpoints reproducible byte for byte. A
    no-op for other optimizers (ZeRO 1 and 2 pad with zeros).
    """
    groups = getattr(optimizer, "fp16_groups", None)
    masters = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    if groups is None or masters is None or not all(hasattr(p, "ds_tensor") for g in groups for p in g):
        return
    low_precision = getattr(optimizer, "fp16_partitioned_groups_flat", [None] * len(masters))
    inner_state = getattr(getattr(optimizer, "optimizer", None), "state", {})
    with torch.no_grad():
        for master, flat, params in zip(masters, low_precision, groups):
            gaps, size = _partition_padding(params)
            for tensor in [master, flat, *inner_state.get(master, {}).values()] if gaps else []:
                if isinstance(tensor, torch.Tensor) and tensor.numel() == size:
                    view = tensor.view(-1)
                    for start, length in gaps:
                        view.narrow(0, start, length).zero_()


def _partition_padding(params: list) -> tuple[list[tuple[int, int]], int]:
    """This rank's padding in the flat partition of ZeRO-3 `params` as (start, length) pairs, and
    the partition's size: each parameter's partition past the parameter's own elements."""
    gaps, offset = [], 0
    for param in params:
        part = param.ds_tensor.ds_numel
        rank = torch.distributed.get_rank(group=param.ds_process_group)
        own = min(part, max(0, param.ds_numel - rank * part))
        if own < part:
            gaps.append((offset + own, part - own))
        offset += part
    return gaps, offset


class ProgressState:
    """A plain JSON-able dict (data position, counters), written by rank 0, restored in place."""

    background_ok = True

    def __init__(self, progress: dict):
        self.progress = progress

    def snapshot(self, name: str, env: DistEnv, copy: bool) -> Writer:
        if not env.is_main:
            return lambda folder: []
        text = json.dumps(self.progress, indent=2, sort_keys=True) + "\n"

        def write(folder: Path) -> list:
            with checkpoint_files.HashedFile(folder / f"{name}.json") as file:
                file.write(text.encode())
                return [file.finish()]

        return write

    def load(self, folder: Path, name: str, env: DistEnv) -> None:
        loaded = json.loads((folder / f"{name}.json").read_text())
        self.progress.clear()
        self.progress.update(loaded)


def _adapters(state: Mapping[str, Any]) -> dict[str, Stateful]:
    """The state dict with plain dicts wrapped as ProgressState; RNG states last (restored last)."""
    adapters = {name: ProgressState(value) if isinstance(value, dict) else value
                for name, value in state.items()}
    for name, adapter in adapters.items():
        if not (hasattr(adapter, "snapshot") and hasattr(adapter, "load")):
            raise TypeError(f"checkpoint state {name!r}: {type(adapter).__name__} is not a state adapter "
                            "or a dict")
    return dict(sorted(adapters.items(), key=lambda item: isinstance(item[1], RNGState)))


# ---------------------------------------------------------------- manifest and verification


def sha256_file(path: Path, fsync: bool = False) -> str:
    """The file's sha256 (hex); with `fsync`, also make its contents durable."""
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def _listing(folder: Path) -> list[str]:
    """Every file under `folder`, relative, sorted; the manifest itself excluded."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())


def sha256_files(paths: list[Path], fsync: bool = False) -> list[str | None]:
    """`sha256_file` of several files at once (hashlib releases the GIL, so threads use the
    cores); None for a file that vanished meanwhile."""
    def digest(path: Path) -> str | None:
        try:
            return sha256_file(path, fsync)
        except FileNotFoundError:
            return None

    if len(paths) <= 1:
        return [digest(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1, _HASH_THREADS)) as pool:
        return list(pool.map(digest, paths))


def verify_files(folder: Path, files: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Problems with the given manifest entries (missing, wrong size, wrong sha256); [] if none."""
    problems, to_hash = [], []
    for relpath, expected in files.items():
        try:
            size = (Path(folder) / relpath).stat().st_size
        except FileNotFoundError:
            problems.append(f"{relpath}: missing")
            continue
        if size != expected["size"]:
            problems.append(f"{relpath}: {size} bytes, manifest says {expected['size']}")
        else:
            to_hash.append(relpath)
    digests = sha256_files([Path(folder) / relpath for relpath in to_hash])
    for relpath, digest in zip(to_hash, digests):
        if digest is None:
            problems.append(f"{relpath}: missing")
        elif digest != files[relpath]["sha256"]:
            problems.append(f"{relpath}: sha256 differs from the manifest")
    return problems


def verify(folder: Path) -> list[str]:
    """Problems that make `folder` unusable as a checkpoint; [] when it is complete and intact."""
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as error:
        return [f"{MANIFEST}: unreadable ({error})"]
    return verify_files(folder, manifest.get("files", {}))


def checkpoint_bytes(manifest: Mapping[str, Any]) -> int:
    """Total size of the files a manifest lists: what the checkpoint takes on disk."""
    return sum(entry["size"] for entry in manifest.get("files", {}).values())


def free_bytes(folder: Path) -> int:
    """Bytes still available to ordinary writers on `folder`'s filesystem (one statvfs)."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def _bytes(n: int) -> str:
    return f"{n} bytes ({n / 2 ** 20:.1f} MiB)"


def _folder_bytes(folder: Path) -> int:
    """Size of the files under `folder` (0 if it is gone)."""
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            pass
    return total


def _chain(error: BaseException) -> Iterable[BaseException]:
    """`error` and the exceptions it was raised from or during, innermost last."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _out_of_space(error: BaseException, folder: Path) -> bool:
    """Did `error` come from a full filesystem? torch.save and DeepSpeed lose the errno (torch
    says "basic_ios::clear: iostream error"), so a nearly full `folder` counts as the answer."""
    if any(isinstance(e, OSError) and e.errno in _SPACE_ERRNOS for e in _chain(error)):
        return True
    try:
        return free_bytes(folder) < _NEARLY_FULL
    except OSError:
        return False


def _close_failed_writes(error: BaseException) -> None:
    """Clear the finished frames in `error`'s tracebacks (file and line stay for the log): a
    writer that failed midway (torch.save) keeps its file open through them, and a deleted
    file that is still open keeps its space."""
    for e in _chain(error):
        traceback.clear_frames(e.__traceback__)


def committed_steps(root: Path) -> list[int]:
    """Steps of the visible (committed) checkpoint folders under `root`, ascending."""
    if not Path(root).is_dir():
        return []
    return sorted(int(m.group(1)) for p in Path(root).iterdir()
                  if p.is_dir() and (m := _STEP_DIR.match(p.name)))


def steps_to_keep(steps: Iterable[int], keep_last: int, keep_every: int) -> set[int]:
    """Retention: the newest `keep_last` (at least one) plus every multiple of `keep_every`."""
    ordered = sorted(steps)
    keep = set(ordered[-max(keep_last, 1):])
    if keep_every > 0:
        keep |= {s for s in ordered if s % keep_every == 0}
    return keep


# ---------------------------------------------------------------- collectives (no-ops for one rank)
# All on the CPU control group: small, and never waiting for queued GPU work.


def _broadcast(env: DistEnv, value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not env.is_distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=env.control_group)
    return box[0]


def _all_gather(env: DistEnv, value: Any) -> list:
    if not env.is_distributed:
        return [value]
    boxes = [None] * env.world_size
    dist.all_gather_object(boxes, value, group=env.control_group)
    return boxes


def _all_reduce_max(env: DistEnv, values: list[int]) -> list[int]:
    if not env.is_distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=env.control_group)
    return tensor.tolist()


def _barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier(group=env.control_group)


# ---------------------------------------------------------------- the manager


class _PendingSave:
    """An async save: this rank's background writer thread and what the commit needs.

    `error`: a failure of the foreground part of the save; the writers are then skipped and the
    commit reports it, so that every rank learns of it at the same collective.
    """

    def __init__(self, step: int, tmp: Path, files: list, writers: list[Writer], error: BaseException | None):
        self.step, self.tmp, self.files = step, tmp, files
        self.error = error
        self.thread = threading.Thread(target=self._run, args=(writers,), name=f"checkpoint-{step}",
                                       daemon=True)
        self.thread.start()

    def _run(self, writers: list[Writer]) -> None:
        if self.error is not None:
            return
        try:
            for write in writers:
                self.files += write(self.tmp)
        except BaseException as error:      # reported to every rank at the commit
            self.error = error


class CheckpointManager:
    """Saves and restores training state under `root` with the protocol above; all ranks call it."""

    def __init__(self, root: str | os.PathLike, env: DistEnv, policy: CheckpointPolicy = CheckpointPolicy()):
        self.root = Path(root)
        self.env = env
        self.policy = policy
        self._last_save = time.monotonic()
        self._pending: _PendingSave | None = None
        self._newest: tuple[str, int] | None = None      # rank 0: (name, bytes) of the newest commit

    @property
    def pending(self) -> bool:
        """Is an async save still being written or waiting for its commit?"""
        return self._pending is not None

    # -------------------------------------------------- restore

    def restore_latest(self, state: Mapping[str, Any]) -> int:
        """Load the newest checkpoint that verifies into `state`; return its step.

        Unfinished (hidden) folders and checkpoints that fail verification are moved to
        `quarantine/` with a record of why. 0 when the stage never committed a checkpoint, or
        when none is usable and `FRESH_START` permits starting over; `NoUsableCheckpoint` when
        it had committed ones and none is usable.
        """
        adapters = _adapters(state)
        survey = None
        if self.env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            survey = (sorted(committed_steps(self.root), reverse=True), self._read_latest())
            self._quarantine_unfinished()
            self._repair_latest()
        candidates, latest = _broadcast(self.env, survey)
        for step in candidates:
            folder = self.root / step_dirname(step)
            problems = self._verify_together(folder)
            if problems:
                log.warning("checkpoint %s is unusable, skipping it: %s", folder, "; ".join(problems[:5]))
                if self.env.is_main:
                    self._quarantine(folder, "; ".join(problems[:3]))
                continue
            for name, adapter in adapters.items():
                adapter.load(folder, name, self.env)
            if self.env.is_main and self._read_latest() != folder.name:
                write_text(self.root / LATEST, folder.name + "\n")
            _barrier(self.env)
            self._last_save = time.monotonic()
            log.info("resumed from %s", folder)
            return step
        self._start_over(latest)
        return 0

    def _start_over(self, latest: str | None) -> None:
        """Nothing usable: return if the stage never committed a checkpoint or may start over;
        raise NoUsableCheckpoint otherwise (collective)."""
        verdict = None
        if self.env.is_main:
            lost = [r for r in checkpoint_health.quarantined(self.root) if checkpoint_health.was_committed(r)]
            if latest is not None or lost:
                verdict = "fresh" if (self.root / FRESH_START).exists() else self._unusable_message(latest)
        verdict = _broadcast(self.env, verdict)
        if verdict == "fresh":
            log.warning("no checkpoint in %s is usable; starting over from step 0 as %s permits", self.root,
                        FRESH_START)
        elif verdict is not None:
            raise NoUsableCheckpoint(verdict)

    def _unusable_message(self, latest: str | None) -> str:
        records = checkpoint_health.quarantined(self.root)
        listed = "; ".join(f"{r['name']} (now {QUARANTINE}/{r['folder']}): {r['reason']}" for r in records[-10:])
        more = f" (and {len(records) - 10} older)" if len(records) > 10 else ""
        pointer = f"`latest` named {latest}; " if latest else ""
        return (f"{self.root} had committed checkpoints but none is usable, so this stage does not start over "
                f"from step 0 on its own. {pointer}quarantined{more}: {listed or 'nothing'}. To start it over, "
                f"run `python -m launcher resume RUN --fresh-start STAGE` (it creates {self.root / FRESH_START}).")

    def _verify_together(self, folder: Path) -> list[str]:
        """`verify(folder)` with the hashing shared among the ranks; the same answer on every rank."""
        if self.env.is_main:
            try:
                entries = read_manifest(folder).get("files", {})
                manifest_problem = None
            except (OSError, ValueError) as error:
                entries, manifest_problem = {}, f"{MANIFEST}: unreadable ({error})"
        else:
            entries, manifest_problem = None, None
        entries, manifest_problem = _broadcast(self.env, (entries, manifest_problem))
        if manifest_problem:
            return [manifest_problem]
        names = sorted(entries)[self.env.rank::self.env.world_size]
        mine = verify_files(folder, {n: entries[n] for n in names})
        return [p for problems in _all_gather(self.env, mine) for p in problems]

    def _read_latest(self) -> str | None:
        try:
            return (self.root / LATEST).read_text().strip()
        except FileNotFoundError:
            return None

    def _repair_latest(self, leaving: str | None = None) -> None:
        """Make `latest` name an existing committed folder other than `leaving` (the newest one),
        or remove it when there is none; atomically, so it never names a missing folder."""
        current = self._read_latest()
        if current is None or (current != leaving and (self.root / current).is_dir()):
            return
        remaining = [s for s in committed_steps(self.root) if step_dirname(s) != leaving]
        if remaining:
            write_text(self.root / LATEST, step_dirname(remaining[-1]) + "\n")
        else:
            (self.root / LATEST).unlink(missing_ok=True)
            fsync_dir(self.root)

    def _quarantine_unfinished(self) -> None:
        """Move folders of interrupted saves to quarantine; finish interrupted retention deletes
        and remove the conversion folders of interrupted reshards."""
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and _UNFINISHED_DIR.match(path.name):
                log.warning("moving unfinished checkpoint folder %s to %s/", path.name, QUARANTINE)
                self._quarantine(path, "unfinished: the save was interrupted before its commit")
            elif (path.is_dir() and _BEING_DELETED_DIR.match(path.name)) or reshard.leftover(path):
                shutil.rmtree(path)

    def _quarantine(self, folder: Path, reason: str) -> None:
        """Move `folder` into quarantine/ with a record of why (rank 0); `latest` stops naming it first."""
        self._repair_latest(leaving=folder.name)
        try:
            checkpoint_health.write_record(folder, folder.name, reason[:500])
        except OSError as error:          # a full disk: the move matters more than the record
            log.warning("could not record why %s is quarantined: %s", folder.name, error)
        target_dir = self.root / QUARANTINE
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{folder.name.lstrip('.')}-{uuid.uuid4().hex[:8]}"
        os.rename(folder, target)
        fsync_dir(self.root)

    # -------------------------------------------------- save

    def due(self, step: int) -> bool:
        """Is a periodic checkpoint due at `step`? Same answer on every rank; all ranks call it each step.

        Also commits a finished async save. Costs one small all-reduce only while the time
        trigger is on or an async save is pending (rank 0's clock decides the time trigger).
        """
        time_due = (self.policy.every_minutes > 0 and self.env.is_main
                    and time.monotonic() - self._last_save >= 60 * self.policy.every_minutes)
        if self.policy.every_minutes > 0 or self._pending is not None:
            time_due, writing = _all_reduce_max(self.env, [int(time_due), int(self._still_writing())])
            if self._pending is not None and not writing:
                self._commit_pending()
        step_due = self.policy.every_steps > 0 and step % self.policy.every_steps == 0
        return bool(step_due or time_due)

    def save_if_due(self, step: int, state: Mapping[str, Any], *, last_step: bool = False, stopping: bool = False,
                    prepare: Callable[[], None] | None = None) -> bool:
        """The end of a training step: save `state` if a stop was agreed (blocking, so the stop
        can follow at once), at the last step, or when the policy says one is due; True if it
        saved. `prepare` runs first, only then (e.g. device-side counters into the progress
        dict). Collective: every rank calls it after every step with the same arguments."""
        if not (stopping or self.due(step) or last_step):
            return False
        if prepare is not None:
            prepare()
        self.save(step, state, blocking=True if stopping else None)
        return True

    def save(self, step: int, state: Mapping[str, Any], blocking: bool | None = None) -> None:
        """Write `state` as checkpoint `step`; all ranks call it with the same state names.

        Blocking (the default unless the policy says async_save) returns after the commit.
        Otherwise it returns once the state is copied to host memory; the files are written
        in a background thread and committed by a later `due`, `save` or `wait`. A save
        before a stop must block (or be followed by `wait()`). A failure raises
        CheckpointSaveFailed (NoSpaceForCheckpoint for a full disk) on every rank, here or
        where the async save is committed, after its unfinished folder was removed.
        """
        blocking = not self.policy.async_save if blocking is None else blocking
        self.wait()
        adapters = _adapters(state)
        final = self.root / step_dirname(step)
        tmp = self._begin(final)
        if tmp is None:
            log.info("checkpoint %s already committed; not writing it again", final.name)
            return
        self._last_save = time.monotonic()
        files: list = []
        for name, adapter in adapters.items():       # collective writers first, each agreed on at once
            if not adapter.background_ok:
                files += self._write_together(final.name, tmp, adapter.snapshot(name, self.env, copy=not blocking))
        background: list[Writer] = []
        error = None
        try:
            for name, adapter in adapters.items():
                if adapter.background_ok:
                    writer = adapter.snapshot(name, self.env, copy=not blocking)
                    if blocking:
                        files += writer(tmp)
                    else:
                        background.append(writer)
        except Exception as failure:
            error = failure
        if background:
            self._pending = _PendingSave(step, tmp, files, background, error)
        else:
            self._commit(step, tmp, files, error)

    def wait(self) -> None:
        """Finish and commit a pending async save (collective; no-op when none is pending)."""
        if self._pending is None:
            return
        self._pending.thread.join()
        self._commit_pending()

    def _still_writing(self) -> bool:
        return self._pending is not None and self._pending.thread.is_alive()

    def _commit_pending(self) -> None:
        pending, self._pending = self._pending, None
        self._commit(pending.step, pending.tmp, pending.files, pending.error)

    def _begin(self, final: Path) -> Path | None:
        """Collective: rank 0 checks the space and creates the hidden folder to write `final` in;
        None when `final` is already committed. Raises on every rank if that fails."""
        answer = self._open(final) if self.env.is_main else None
        tmp_name, failure = _broadcast(self.env, answer)
        if failure is not None:
            space, message = failure
            raise (NoSpaceForCheckpoint if space else CheckpointSaveFailed)(message)
        return None if tmp_name is None else self.root / tmp_name

    def _open(self, final: Path) -> tuple[str | None, tuple[bool, str] | None]:
        """Rank 0's part of `_begin`: (hidden folder name, None), (None, None) when already
        committed, or (None, (out of space?, message)). One stat, one statvfs, one mkdir."""
        if final.exists():
            return None, None
        newest = self._newest_checkpoint()
        if newest is not None:
            free = free_bytes(self.root)
            if free < newest[1]:
                return None, (True, self._space_message(final.name, free, None, "nothing was written"))
        tmp_name = f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            (self.root / tmp_name).mkdir(parents=True)
        except OSError as error:
            failure = self._failure(error)
            return None, (failure["space"], self._failure_message(final.name, [failure], 0, "nothing was written"))
        return tmp_name, None

    def _newest_checkpoint(self) -> tuple[str, int] | None:
        """(name, bytes) of the newest committed checkpoint, from its manifest (read once)."""
        if self._newest is None:
            name = self._read_latest()
            try:
                self._newest = (name, checkpoint_bytes(read_manifest(self.root / name))) if name else None
            except (OSError, ValueError):
                pass
        return self._newest

    def _write_together(self, name: str, tmp: Path, write: Writer) -> list:
        """Run a collective writer on every rank, then agree on whether it failed anywhere."""
        try:
            files, error = write(tmp), None
        except Exception as failure:
            files, error = [], failure
        self._settle(name, tmp, error)
        return files

    def _commit(self, step: int, tmp: Path, my_files: list, error: BaseException | None = None) -> None:
        """Hash what the writers did not, write the manifest last, rename into view, move
        `latest`; collective. A failure on any rank (`error`: this rank's writing failed)
        abandons the save on every rank."""
        name = step_dirname(step)
        hashed = {f.name: f.entry() for f in my_files if isinstance(f, Written)}
        settled = _all_gather(self.env, (self._failure(error), hashed))     # every rank's files are written
        failures = [failure for failure, _ in settled if failure]
        if failures:
            self._abandon(name, tmp, failures, error)
        hashed = {rel: entry for _, entries in settled for rel, entry in entries.items()}
        listing = _broadcast(self.env, [rel for rel in _listing(tmp) if rel not in hashed]
                             if self.env.is_main else None)
        mine = listing[self.env.rank::self.env.world_size]
        digests, error = (hashed if self.env.is_main else {}), None
        try:
            hashes = sha256_files([tmp / rel for rel in mine], fsync=True)
            digests.update({rel: {"size": (tmp / rel).stat().st_size, "sha256": digest}
                            for rel, digest in zip(mine, hashes)})
        except Exception as failure:                           # fsync of a full NFS, say
            error = failure
        names = [f.name if isinstance(f, Written) else f for f in my_files]
        gathered = _all_gather(self.env, (digests, names, self._failure(error)))
        failures = [failure for _, _, failure in gathered if failure]
        if failures:
            self._abandon(name, tmp, failures, error)
        failure = None
        if self.env.is_main:
            try:
                self._publish(step, tmp, gathered)
            except Exception as publishing:
                error, failure = publishing, self._failure(publishing)
        failure = _broadcast(self.env, failure)               # nobody leaves before the commit
        if failure:
            self._abandon(name, tmp, [failure], error)

    def _publish(self, step: int, tmp: Path, gathered: list) -> None:
        """Rank 0: write the manifest, rename the folder into view, move `latest`, apply retention."""
        manifest = {
            "format": MANIFEST_FORMAT,
            "step": step,
            "world_size": self.env.world_size,
            "created": time.time(),
            "files": {rel: entry for d, _, _ in gathered for rel, entry in sorted(d.items())},
            "ranks": {str(rank): sorted(files) for rank, (_, files, _) in enumerate(gathered)},
        }
        for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            fsync_dir(folder)
        write_json(tmp / MANIFEST, manifest)
        final = self.root / step_dirname(step)
        os.rename(tmp, final)
        fsync_dir(self.root)
        write_text(self.root / LATEST, final.name + "\n")
        self._newest = (final.name, checkpoint_bytes(manifest))
        self._consume_fresh_start()
        self._apply_retention()

    def _consume_fresh_start(self) -> None:
        """A committed checkpoint ends the operator's permission to start over (made durable by
        the retention's folder fsync that follows)."""
        try:
            (self.root / FRESH_START).unlink()
            log.info("first checkpoint after a fresh start committed; %s removed", FRESH_START)
        except FileNotFoundError:
            pass

    def _apply_retention(self) -> None:
        steps = committed_steps(self.root)
        keep = steps_to_keep(steps, self.policy.keep_last, self.policy.keep_every)
        for step in steps:
            if step not in keep:
                doomed = self.root / f".{step_dirname(step)}.deleting-{uuid.uuid4().hex[:12]}"
                os.rename(self.root / step_dirname(step), doomed)      # out of view first
                shutil.rmtree(doomed)
        fsync_dir(self.root)

    # -------------------------------------------------- failures

    def _failure(self, error: BaseException | None) -> dict | None:
        """What other ranks need to know of this rank's failure (None for none)."""
        if error is None:
            return None
        _close_failed_writes(error)
        return {"rank": self.env.rank, "space": _out_of_space(error, self.root),
                "diverged": isinstance(error, finite.NonFiniteWeights),
                "text": f"{type(error).__name__}: {error}"[:300]}

    def _settle(self, name: str, tmp: Path, error: BaseException | None) -> None:
        """Collective: return if no rank failed; otherwise abandon the save on every rank."""
        failures = [failure for failure in _all_gather(self.env, self._failure(error)) if failure]
        if failures:
            self._abandon(name, tmp, failures, error)

    def _abandon(self, name: str, tmp: Path, failures: list[dict], error: BaseException | None) -> None:
        """Collective: rank 0 removes the unfinished folder `tmp`, then every rank raises the
        first failure (a space failure if there is one), with the space it leaves free."""
        message = None
        if self.env.is_main:
            written = _folder_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            fsync_dir(self.root)
            message = self._failure_message(name, failures, written)
        message = _broadcast(self.env, message)            # nobody raises before the folder is gone
        space = any(failure["space"] for failure in failures)
        diverged = any(failure["diverged"] for failure in failures)
        raise (NoSpaceForCheckpoint if space else TrainingDiverged if diverged else CheckpointSaveFailed)(
            message) from error

    def _failure_message(self, name: str, failures: list[dict], written: int,
                         done: str = "its unfinished folder was removed") -> str:
        first = next((f for f in failures if f["space"]), failures[0])
        detail = f"rank {first['rank']}: {first['text']}"
        if first["space"]:
            return self._space_message(name, free_bytes(self.root), written, done, detail)
        diverged = next((f for f in failures if f["diverged"]), None)
        if diverged is not None:
            return (f"training diverged: checkpoint {name} refused (rank {diverged['rank']}: {diverged['text']}); "
                    f"{done}, and {self._left_intact()}. A resume repeats the same steps: lower the learning "
                    f"rate (or change what diverged) first")
        return f"checkpoint {name} could not be written in {self.root} ({detail}); {done}, and {self._left_intact()}"

    def _space_message(self, name: str, free: int, written: int | None, done: str, detail: str = "") -> str:
        """The full-disk error: folder, bytes needed (the newest checkpoint's size, or more than
        was `written` when the disk filled, whichever is larger) and bytes free."""
        newest = self._newest_checkpoint()
        if written and (newest is None or written >= newest[1]):
            needed = f"more than the {_bytes(written)} written before the disk filled"
            needed += f" ({newest[0]} took {_bytes(newest[1])})" if newest else ""
        elif newest is not None:
            needed = f"about {_bytes(newest[1])}, the size of {newest[0]}"
        else:
            needed = "an unknown amount"
        detail = f" ({detail})" if detail else ""
        return (f"no space for checkpoint {name} in {self.root}: it needs {needed}, and {free} bytes are free "
                f"({free / 2 ** 20:.1f} MiB){detail}; {done}, and {self._left_intact()}. Free space there, "
                f"then resume: the stage continues from its newest checkpoint")

    def _left_intact(self) -> str:
        latest = self._read_latest()
        if latest is None:
            return "no checkpoint was committed before"
        return f"{latest} (`latest`) and older checkpoints are intact"
