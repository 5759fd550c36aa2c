"""Sharded checkpoints that are visible only when complete, and exact resume from the newest one.

Protocol (all ranks take part in `save`):
1. rank 0 creates `.step-000123.tmp-<nonce>/`; every rank writes its files (shards, per-rank
   RNG, DeepSpeed ZeRO partitions) into it;
2. barrier; the ranks hash the files between them (sha256, fsync);
3. rank 0 writes `manifest.json` (every file's size and sha256, the files each rank wrote)
   last and atomically, renames the folder to `step-000123/`, fsyncs, and rewrites `latest`.
A visible `step-*` folder is therefore complete; a kill at any instant leaves at worst a
hidden `.step-*.tmp-*` folder, which the next restore moves to `quarantine/`.

State is a dict of adapters: `ModuleState`, `OptimizerState`, `DeepSpeedState`, `RNGState`,
or a plain JSON-able dict (progress: data position, counters), restored in place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

import torch
import torch.distributed as dist

from launcher.atomic import fsync_dir, write_json, write_text
from launcher.runtime import rng
from launcher.runtime.context import CheckpointPolicy
from launcher.runtime.distributed import DistEnv

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
QUARANTINE = "quarantine"
MANIFEST_FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_UNFINISHED_DIR = re.compile(r"^\.step-\d+\.tmp-[0-9a-f]+$")
_BEING_DELETED_DIR = re.compile(r"^\.step-\d+\.deleting-[0-9a-f]+$")
_HASH_CHUNK = 8 << 20
_HASH_THREADS = 8

Writer = Callable[[Path], list]       # writes this rank's files into a folder, returns their names


def step_dirname(step: int) -> str:
    return f"step-{step:06d}"


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


def _safetensors_ready(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, none sharing memory with another (tied weights get their own copy)."""
    ready, seen_storage = {}, set()
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen_storage or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen_storage.add(pointer)
        ready[key] = tensor
    return ready


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        tensors = _copied_to_host(state, self._staging) if copy else _safetensors_ready(_on_host(state))

        def write(folder: Path) -> list:
            from safetensors.torch import save_file

            path = folder / f"{name}.safetensors"
            save_file(tensors, str(path))
            _fsync_file(path)
            return [path.name]

        return write

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
        filename = self._filename(name, env.rank)

        def write(folder: Path) -> list:
            path = folder / filename
            torch.save(state, path)
            _fsync_file(path)
            return [filename]

        return write

    def load(self, folder: Path, name: str, env: DistEnv) -> None:
        path = folder / self._filename(name, env.rank)
        self.obj.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class RNGState:
    """Python, NumPy, torch CPU and CUDA generator states of every rank (one file per rank)."""

    background_ok = True

    def snapshot(self, name: str, env: DistEnv, copy: bool) -> Writer:
        state = rng.capture()
        filename = f"{name}.rank-{env.rank:05d}.pt"

        def write(folder: Path) -> list:
            path = folder / filename
            torch.save(state, path)
            _fsync_file(path)
            return [filename]

        return write

    def load(self, folder: Path, name: str, env: DistEnv) -> None:
        path = folder / f"{name}.rank-{env.rank:05d}.pt"
        if not path.exists():
            log.warning("no RNG state for rank %d in %s (world size changed?); generators not restored",
                        env.rank, folder)
            return
        rng.restore(torch.load(path, map_location="cpu", weights_only=True))


class DeepSpeedState:
    """A DeepSpeed engine (module, ZeRO-partitioned optimizer, scheduler) via its own save/load.

    Written into the checkpoint folder under the tag `name` with `save_latest=False`: DeepSpeed's
    own `latest` file is written by rank 0 without waiting for the others, so it is not used.
    Collective, so it always runs in the foreground.
    """

    background_ok = False

    def __init__(self, engine: Any):
        self.engine = engine

    def snapshot(self, name: str, env: DistEnv, copy: bool) -> Writer:
        def write(folder: Path) -> list:
            self.engine.save_checkpoint(str(folder), tag=name, client_state={}, save_latest=False)
            return []       # which rank wrote which shard is DeepSpeed's business; all are hashed

        return write

    def load(self, folder: Path, name: str, env: DistEnv) -> None:
        path, _ = self.engine.load_checkpoint(
            str(folder), tag=name, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load tag {name!r} from {folder}")


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
            path = folder / f"{name}.json"
            path.write_text(text)
            _fsync_file(path)
            return [path.name]

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
    """An async save: this rank's background writer thread and what the commit needs."""

    def __init__(self, step: int, tmp: Path, files: list, writers: list[Writer]):
        self.step, self.tmp, self.files = step, tmp, files
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(writers,), name=f"checkpoint-{step}",
                                       daemon=True)
        self.thread.start()

    def _run(self, writers: list[Writer]) -> None:
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

    @property
    def pending(self) -> bool:
        """Is an async save still being written or waiting for its commit?"""
        return self._pending is not None

    # -------------------------------------------------- restore

    def restore_latest(self, state: Mapping[str, Any]) -> int:
        """Load the newest checkpoint that verifies into `state`; return its step (0 if none).

        Unfinished (hidden) folders and checkpoints that fail verification are moved to
        `quarantine/` with a warning, kept for inspection.
        """
        adapters = _adapters(state)
        if self.env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            self._quarantine_unfinished()
        candidates = _broadcast(self.env, sorted(committed_steps(self.root), reverse=True))
        for step in candidates:
            folder = self.root / step_dirname(step)
            problems = self._verify_together(folder)
            if problems:
                log.warning("checkpoint %s is unusable, skipping it: %s", folder, "; ".join(problems[:5]))
                if self.env.is_main:
                    self._quarantine(folder)
                continue
            for name, adapter in adapters.items():
                adapter.load(folder, name, self.env)
            if self.env.is_main and self._read_latest() != folder.name:
                write_text(self.root / LATEST, folder.name + "\n")
            _barrier(self.env)
            self._last_save = time.monotonic()
            log.info("resumed from %s", folder)
            return step
        _barrier(self.env)
        return 0

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

    def _quarantine_unfinished(self) -> None:
        """Move folders of interrupted saves to quarantine; finish interrupted retention deletes."""
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and _UNFINISHED_DIR.match(path.name):
                log.warning("moving unfinished checkpoint folder %s to %s/", path.name, QUARANTINE)
                self._quarantine(path)
            elif path.is_dir() and _BEING_DELETED_DIR.match(path.name):
                shutil.rmtree(path)

    def _quarantine(self, folder: Path) -> None:
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
            time_due, running, failed = _all_reduce_max(self.env, [int(time_due), *self._pending_status()])
            if self._pending is not None and not running:
                self._commit_pending(failed)
        step_due = self.policy.every_steps > 0 and step % self.policy.every_steps == 0
        return bool(step_due or time_due)

    def save(self, step: int, state: Mapping[str, Any], blocking: bool | None = None) -> None:
        """Write `state` as checkpoint `step`; all ranks call it with the same state names.

        Blocking (the default unless the policy says async_save) returns after the commit.
        Otherwise it returns once the state is copied to host memory; the files are written
        in a background thread and committed by a later `due`, `save` or `wait`. A save
        before a stop must block (or be followed by `wait()`).
        """
        blocking = not self.policy.async_save if blocking is None else blocking
        self.wait()
        adapters = _adapters(state)
        final = self.root / step_dirname(step)
        tmp_name = None
        if self.env.is_main and not final.exists():
            tmp_name = f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
            (self.root / tmp_name).mkdir(parents=True)
        tmp_name = _broadcast(self.env, tmp_name)
        if tmp_name is None:
            log.info("checkpoint %s already committed; not writing it again", final.name)
            return
        tmp = self.root / tmp_name
        self._last_save = time.monotonic()
        files: list = []
        background: list[Writer] = []
        for name, adapter in adapters.items():
            writer = adapter.snapshot(name, self.env, copy=not blocking)
            if blocking or not adapter.background_ok:
                files += writer(tmp)
            else:
                background.append(writer)
        if background:
            self._pending = _PendingSave(step, tmp, files, background)
        else:
            self._commit(step, tmp, files)

    def wait(self) -> None:
        """Finish and commit a pending async save (collective; no-op when none is pending)."""
        if self._pending is None:
            return
        self._pending.thread.join()
        _, failed = self._pending_status()
        _, failed = _all_reduce_max(self.env, [0, failed])
        self._commit_pending(failed)

    def _pending_status(self) -> list[int]:
        """[still running, failed] for this rank's async save."""
        if self._pending is None:
            return [0, 0]
        return [int(self._pending.thread.is_alive()), int(self._pending.error is not None)]

    def _commit_pending(self, failed_anywhere: int) -> None:
        pending, self._pending = self._pending, None
        if failed_anywhere:
            raise RuntimeError(f"async checkpoint of step {pending.step} failed on at least one rank; "
                               f"left unfinished in {pending.tmp.name}") from pending.error
        self._commit(pending.step, pending.tmp, pending.files)

    def _commit(self, step: int, tmp: Path, my_files: list) -> None:
        """Hash, write the manifest last, rename into view, move `latest`; collective."""
        _barrier(self.env)                                   # every rank's files are written
        listing = _broadcast(self.env, _listing(tmp) if self.env.is_main else None)
        mine = listing[self.env.rank::self.env.world_size]
        hashes = sha256_files([tmp / rel for rel in mine], fsync=True)
        digests = {rel: {"size": (tmp / rel).stat().st_size, "sha256": digest} for rel, digest in zip(mine, hashes)}
        gathered = _all_gather(self.env, (digests, my_files))
        if self.env.is_main:
            manifest = {
                "format": MANIFEST_FORMAT,
                "step": step,
                "world_size": self.env.world_size,
                "created": time.time(),
                "files": {rel: entry for d, _ in gathered for rel, entry in sorted(d.items())},
                "ranks": {str(rank): sorted(files) for rank, (_, files) in enumerate(gathered)},
            }
            for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                fsync_dir(folder)
            write_json(tmp / MANIFEST, manifest)
            final = self.root / step_dirname(step)
            os.rename(tmp, final)
            fsync_dir(self.root)
            write_text(self.root / LATEST, final.name + "\n")
            self._apply_retention()
        _barrier(self.env)                                   # nobody leaves before the commit

    def _apply_retention(self) -> None:
        steps = committed_steps(self.root)
        keep = steps_to_keep(steps, self.policy.keep_last, self.policy.keep_every)
        for step in steps:
            if step not in keep:
                doomed = self.root / f".{step_dirname(step)}.deleting-{uuid.uuid4().hex[:12]}"
                os.rename(self.root / step_dirname(step), doomed)      # out of view first
                shutil.rmtree(doomed)
        fsync_dir(self.root)
