"""Resharding a DeepSpeed ZeRO checkpoint for a world size other than the one that wrote it.

ZeRO-1/2/3 partition the fp32 masters and optimizer moments by rank, so a checkpoint loads only
on its own world size. On a change, rank 0 converts the committed shards in-process with
DeepSpeed's universal-checkpoint converter (`ds_to_universal`, per parameter: fp32 master,
exp_avg, exp_avg_sq, unpartitioned) into a hidden folder beside the checkpoint, every rank
loads its new partition from it (`checkpoint.load_universal`), and the folder is removed. The
committed checkpoint is only read; a kill leaves at worst a `.reshard-*` folder, which the next
restore deletes.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import torch.distributed as dist

from launcher.atomic import fsync_dir
from launcher.runtime.distributed import DistEnv

log = logging.getLogger(__name__)

FOLDER_PREFIX = ".reshard-"


class ReshardFailed(RuntimeError):
    """The checkpoint's ZeRO shards could not be converted for the new world size."""


@contextlib.contextmanager
def universal_copy(folder: Path, tag: str, env: DistEnv) -> Iterator[Path]:
    """A folder holding `folder/tag` as a universal checkpoint under the same tag, for every
    rank while the block runs (collective); removed afterwards, also on failure."""
    target = folder.parent / f"{FOLDER_PREFIX}{folder.name}-{uuid.uuid4().hex[:12]}"
    failure = None
    if env.is_main:
        try:
            convert(folder / tag, target / tag)
        except Exception as error:          # every rank must learn of it, not wait for rank 0
            failure = f"{type(error).__name__}: {error}"
    box = [(str(target), failure)]
    if env.is_distributed:
        dist.broadcast_object_list(box, src=0, group=env.control_group)
    target, failure = Path(box[0][0]), box[0][1]
    try:
        if failure is not None:
            raise ReshardFailed(f"could not reshard {folder} for {env.world_size} ranks: {failure}")
        yield target
    finally:
        if env.is_distributed:
            dist.barrier(group=env.control_group)       # every rank has loaded (or failed)
        if env.is_main:
            shutil.rmtree(target, ignore_errors=True)
            fsync_dir(folder.parent)


def convert(source: Path, target: Path) -> None:
    """DeepSpeed's universal-checkpoint conversion of one tag's ZeRO shards, in this process
    (one worker: no process pool); its progress printout goes to the debug log."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(source), output_folder=str(target), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ds_to_universal.main(args)
    log.debug("ds_to_universal %s -> %s:\n%s", source, target, printed.getvalue())


def leftover(path: Path) -> bool:
    """Is `path` the conversion folder of a resume that was killed (safe to delete)?"""
    return path.is_dir() and path.name.startswith(FOLDER_PREFIX)
