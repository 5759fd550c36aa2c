"""One field, `slurm.signal`, decides the warning signal: the batch script's `--signal`, the
signals every rank stops on, what torchrun's agent ignores and what the local supervisor sends
on Ctrl-C all derive from it; a stage-level list or a signal nothing would handle is refused."""
import json
import signal
import subprocess
import sys
from pathlib import Path

from launcher import plan as planner
from launcher.spec import load_spec
from tests.launcher_helpers import launcher, processed_items, wait_until, write_spec

ROOT = Path(__file__).resolve().parents[1]
TWO_RANKS = """
    name: warn
    backend: slurm
    run_root: runs
    slurm: {partition: debug, signal: USR1, signal_seconds: 60}
    stages:
      train:
        task: diagnose.allreduce
        resources: {tasks_per_node: 2}
"""


def test_slurm_signal_decides_the_batch_script_the_stop_signals_and_what_torchrun_ignores(tmp_path):
    rendered = launcher("render", str(write_spec(tmp_path, TWO_RANKS)), cwd=tmp_path, check=True).stdout
    assert "#SBATCH --signal=USR1@60" in rendered
    assert "launcher.shield --signals USR1,TERM,INT --" in rendered


def test_the_plan_tells_every_rank_to_stop_on_the_warning_signal_sigterm_and_sigint(tmp_path):
    spec = write_spec(tmp_path, TWO_RANKS.replace("backend: slurm", "backend: local"))
    plan = planner.build(load_spec(str(spec), []), "/runs/x", sys.executable)
    assert plan.warning_signal == "USR1"
    assert plan.stages[0].stop_signals == ["USR1", "TERM", "INT"]


def test_a_stage_level_stop_signals_list_is_refused_with_file_and_line(tmp_path):
    spec = write_spec(tmp_path, TWO_RANKS + "        stop_signals: [USR2]\n")
    result = launcher("validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert "spec.yaml:10: stages.train.stop_signals: not a stage setting" in result.stderr


def test_a_warning_signal_that_nothing_would_handle_is_refused(tmp_path):
    for name in ("URG", "KILL", "CONT"):
        result = launcher("validate", str(write_spec(tmp_path, TWO_RANKS.replace("USR1", name))), cwd=tmp_path)
        assert result.returncode == 2 and "slurm.signal: must be one of USR2, USR1, TERM, INT, HUP" in result.stderr


def test_with_usr1_as_warning_signal_the_first_ctrl_c_checkpoints_and_stops_the_local_run(tmp_path):
    spec = write_spec(tmp_path, """
        name: usr1
        run_root: runs
        slurm: {signal: USR1}
        stages:
          shards:
            task: diagnose.items
            config: {items: 40, seconds_per_item: 0.2}
    """)
    supervisor = subprocess.Popen([sys.executable, "-m", "launcher", "submit", str(spec)], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = wait_until(lambda: next((tmp_path / "runs").glob("*/plan.json"), None), 60, "the run").parent
    wait_until(lambda: len(processed_items(run, "shards")) >= 2, 60, "a few items")
    supervisor.send_signal(signal.SIGINT)
    output, _ = supervisor.communicate(timeout=60)
    attempt = json.loads((run / "ledger/shards/shard-0-attempt-0.json").read_text())
    assert (attempt["exit_code"], attempt["signal"], attempt["state"]) == (75, "SIGUSR1", "stopped"), output
