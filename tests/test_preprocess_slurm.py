"""Preprocessing as a Slurm array on the real local cluster: one array task requeued in the middle
of its shard (`scontrol requeue`: SIGTERM, the task stops between clips, Slurm reruns it) and one
whose worker is SIGKILLed in the middle of a clip (the supervisor restarts it) end with the same
outputs as an uninterrupted local run, and every clip is committed exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nerffacespeech.data import layout, sharding
from nerffacespeech.data.processed import ProcessedData
from tests.launcher_helpers import launcher, run_dir_from, wait_until, write_spec

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
SHARDS = 4
FRAMES_PER_CLIP = 12
SAMPLES_PER_FRAME = 16_000 // 25


def clips_from_sample(root: Path) -> list[str]:
    """The first clip of every sample person cut into short clips (images/<p>/<c>/, audio/<p>/<c>.wav)."""
    keys = []
    for person in sorted(p.name for p in (SAMPLE / "images").iterdir()):
        frames = sorted((SAMPLE / "images" / person / "00001").glob("*.jpg"))
        with wave.open(str(SAMPLE / "audio" / person / "00001.wav")) as w:
            assert w.getframerate() == 16_000
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        for c, start in enumerate(range(0, len(frames) - FRAMES_PER_CLIP + 1, FRAMES_PER_CLIP)):
            name = f"c{c}"
            folder = root / "images" / person / name
            folder.mkdir(parents=True)
            for i, frame in enumerate(frames[start:start + FRAMES_PER_CLIP]):
                (folder / f"{i + 1:05d}.jpg").write_bytes(frame.read_bytes())
            wav = root / "audio" / person / f"{name}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            with wave.open(str(wav), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(16_000)
                w.writeframes(pcm[start * SAMPLES_PER_FRAME:(start + FRAMES_PER_CLIP) * SAMPLES_PER_FRAME].tobytes())
            keys.append(f"{person}/{name}")
    return keys


def spec(backend: str, data: Path, out: Path, array: int) -> str:
    head = ("backend: local\nlocal: {device: cpu, max_parallel: 2}" if backend == "local" else
            'backend: slurm\nslurm: {partition: debug, time: "10"}')
    config = json.dumps({"data_dir": str(data), "output_dir": str(out), "resolution": 64,
                         "landmarker": "dlib", "fit3dmm": {"warm_steps": 40, "batch_frames": 8}})
    return f"name: prep-{backend}\nrun_root: runs\n{head}\nstages:\n  preprocess:\n" \
           f"    task: preprocess\n    array: {array}\n    config: {config}\n"


def attempts(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "ledger" / "preprocess").glob("shard-*.json"))]


def worker_pids(run: Path, job_id: str) -> list[int]:
    """PIDs of `python -m launcher.entry RUN preprocess` of one array task (our own test's job)."""
    array_job, task = job_id.split("_")
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if cmd[1:4] == [b"-m", b"launcher.entry", str(run).encode()] and \
                f"SLURM_ARRAY_JOB_ID={array_job}".encode() in env and f"SLURM_ARRAY_TASK_ID={task}".encode() in env:
            pids.append(int(proc.name))
    return pids


def committed(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in ProcessedData(out).read_processed():
        counts[line["key"]] = counts.get(line["key"], 0) + 1
    return counts


def assert_same_outputs(ref: Path, got: Path, keys: list[str]) -> None:
    for key in keys:
        assert ProcessedData(got).read_outcome(key)["status"] == ProcessedData(ref).read_outcome(key)["status"] == "done"
        with zipfile.ZipFile(ProcessedData(ref).clip_dir(key) / "frames.zip") as a, \
                zipfile.ZipFile(ProcessedData(got).clip_dir(key) / "frames.zip") as b:
            assert a.namelist() == b.namelist()
            assert all(a.read(n) == b.read(n) for n in a.namelist()), key
        with np.load(ProcessedData(ref).clip_dir(key) / "clip.npz") as a, \
                np.load(ProcessedData(got).clip_dir(key) / "clip.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for name in a.files:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"{key} {name}")


def test_requeued_array_tasks_give_the_uninterrupted_outputs_and_commit_each_clip_once(tmp_path, monkeypatch):
    data = tmp_path / "data"
    keys = clips_from_sample(data)
    assert len(keys) >= 2 * SHARDS
    ref_out, out = tmp_path / "reference", tmp_path / "sharded"
    # Every step's python (local processes, Slurm's batch scripts) must run this checkout's code.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")      # the same reduction order in both runs

    (tmp_path / "ref").mkdir()
    launcher("submit", str(write_spec(tmp_path / "ref", spec("local", data, ref_out, 1))),
             cwd=tmp_path / "ref", check=True, timeout=600)
    assert committed(ref_out) == {k: 1 for k in keys}

    (tmp_path / "slurm").mkdir()
    result = launcher("submit", str(write_spec(tmp_path / "slurm", spec("slurm", data, out, SHARDS))),
                      cwd=tmp_path / "slurm", check=True)
    run = run_dir_from(result.stdout)
    per_shard = [len(s) for s in sharding.assign(layout.find_clips(data), SHARDS)]
    assert min(per_shard) >= 3
    interrupted: dict[int, str] = {}                   # shard -> "requeue" | "kill"
    deadline = time.time() + 240
    while len(interrupted) < 2 and time.time() < deadline:
        done = [0] * SHARDS
        for line in ProcessedData(out).read_processed():
            done[line["shard"]] += 1
        for a in attempts(run):
            if len(interrupted) == 2:                    # exactly two: one requeued, one killed
                break
            shard = a["shard"]
            # In the middle: one clip committed, and at least one more after the one in flight.
            if a.get("state") != "running" or a["attempt"] or shard in interrupted \
                    or not 1 <= done[shard] <= per_shard[shard] - 2:
                continue
            if "requeue" not in interrupted.values():    # Slurm's requeue: SIGTERM, stop between clips
                subprocess.run(["scontrol", "requeue", a["job_id"]], check=True, capture_output=True)
                interrupted[shard] = "requeue"
            elif worker_pids(run, a["job_id"]):         # a hard kill of the worker, mid-clip
                for pid in worker_pids(run, a["job_id"]):
                    os.kill(pid, signal.SIGKILL)
                interrupted[shard] = "kill"
        time.sleep(0.2)
    assert len(interrupted) == 2, f"could not catch two shards in the middle: {attempts(run)}"

    wait_until(lambda: len({a["shard"] for a in attempts(run) if a.get("state") == "completed"}) == SHARDS,
               300, "every array task to finish")
    history = attempts(run)
    for shard, how in interrupted.items():
        runs = [a for a in history if a["shard"] == shard]
        if how == "requeue":        # the ledger says who requeued it, and the supervisor added nothing
            assert [a["state"] for a in runs] == ["requeued", "completed"], (how, runs)
            assert "scontrol requeue" in runs[0]["reason"] and runs[0]["exit_code"] == 75, runs[0]
        else:                       # a failure, retried at once inside the same allocation
            assert [a["state"] for a in runs] == ["restarted", "completed"], (how, runs)
            assert runs[0]["exit_code"] != 75 and runs[0]["job_id"] == runs[1]["job_id"], runs[0]
        assert {line["attempt"] for line in ProcessedData(out).read_processed() if line["shard"] == shard} == {0, 1}
    assert committed(out) == {k: 1 for k in keys}
    assert_same_outputs(ref_out, out, keys)
