"""The checkpoint benchmark on CPU with a tiny state: it measures the save stall (call + slowdown)
and exits as soon as its JSON is written, even with a non-daemon thread left running (on the
H200 it once sat on its 90 s time limit after writing its results)."""
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The bench run as `python bench/checkpoint_bench.py ...`, with a thread that would hold a normal exit.
RUN_WITH_A_THREAD_LEFT = """
import runpy, sys, threading
threading.Thread(target=threading.Event().wait, name="left-running").start()
sys.argv = ["bench/checkpoint_bench.py", *sys.argv[1:]]
sys.path.insert(0, "bench")
runpy.run_path("bench/checkpoint_bench.py", run_name="__main__")
"""


def test_the_bench_measures_the_stall_and_exits_right_after_writing_its_json(tmp_path):
    output = tmp_path / "checkpoint.json"
    bench = subprocess.Popen([sys.executable, "-c", RUN_WITH_A_THREAD_LEFT, "--width", "64", "--depth", "2",
                              "--parts", "stall", "--states", "toy", "--workdir", str(tmp_path),
                              "--output", str(output)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = bench.communicate(timeout=240)
    finally:
        bench.kill()
    exited = time.time()
    assert bench.returncode == 0, stderr
    assert exited - output.stat().st_mtime < 5
    assert "non-daemon threads ['left-running']" in stderr
    stall = json.loads(output.read_text())["results"]["stall"]["toy"]
    for mode in ("sync", "async", "sync_first", "async_first"):
        row = stall[mode]
        assert row["stall_s"] == row["save_call_s"] + row["slowdown_of_later_steps_s"]
        assert row["steps_until_committed"] >= 3
    assert "stall, async save (toy state" in stdout
