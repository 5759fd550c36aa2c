"""When every checkpoint of a stage is corrupt, the operator sees it where they look: the
supervisor's output and `status` name what was quarantined and why, the stage does not start
over on its own, and `resume --fresh-start STAGE` is the explicit way to start over.

A real 2-rank toy training run under the local supervisor; its checkpoint files are damaged
on disk the way a failing filesystem would."""
import signal
import subprocess
import sys

from tests.launcher_helpers import launcher, training_spec, wait_until, write_spec


def test_all_checkpoints_corrupt_is_reported_in_the_supervisor_output_and_status_not_restarted(tmp_path):
    spec = write_spec(tmp_path, training_spec("corrupt", "launcher.diagnose_train:main",
                                              {"steps": 40, "sleep_per_step": 0.15}, every_steps=5, restarts=0))
    supervisor = subprocess.Popen([sys.executable, "-m", "launcher", "submit", str(spec)], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoints = wait_until(lambda: next((tmp_path / "runs").glob("*/stages/train/checkpoints"), None), 60,
                             "the checkpoint folder")
    wait_until(lambda: len(list(checkpoints.glob("step-*"))) >= 2, 120, "two checkpoints")
    supervisor.send_signal(signal.SIGINT)
    supervisor.communicate(timeout=120)
    run = checkpoints.parents[2]
    for path in checkpoints.glob("step-*/*"):
        if path.is_file() and path.name != "manifest.json":
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF                       # one flipped byte per file
            path.write_bytes(bytes(data))

    resumed = launcher("resume", run.name, cwd=tmp_path, timeout=300)
    assert resumed.returncode != 0
    assert "quarantined" in resumed.stdout and "NoUsableCheckpoint" in resumed.stdout
    status = launcher("status", run.name, cwd=tmp_path, check=True).stdout
    assert "checkpoint(s) quarantined" in status
    assert not (run / "stages/train/final.json").exists()

    launcher("resume", run.name, "--fresh-start", "train", cwd=tmp_path, check=True, timeout=300)
    assert (run / "stages/train/final.json").exists()
