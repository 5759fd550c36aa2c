"""The local cluster's scripts on a private state dir (never the shared cluster's): stop.sh
stops the daemons its PID files name without printing errors when a daemon removes its own
PID file as it exits (munged does)."""
import os
import stat
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "slurm" / "local-cluster"


def test_reading_a_pid_file_that_its_daemon_removes_meanwhile_prints_nothing(tmp_path):
    """The file vanishes between pid_alive's steps thousands of times a second: no error line."""
    race = f"""
        STATE={tmp_path}; source {SCRIPTS}/common.sh; f={tmp_path}/flip.pid
        ( end=$((SECONDS + 2)); while (( SECONDS < end )); do echo $$ > $f; rm -f $f; done ) &
        end=$((SECONDS + 2)); while (( SECONDS < end )); do pid_alive "$f" bash || true; done; wait
    """
    result = subprocess.run(["bash", "-c", race], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr[:500]


def test_stop_sh_stops_a_daemon_that_removes_its_own_pid_file_quietly(tmp_path):
    state = tmp_path / "state"
    (state / "munge").mkdir(parents=True)
    pidfile = state / "munge" / "munged.pid"
    fake = tmp_path / "munged"      # a script's name is its process's comm: stop.sh sees "munged"
    fake.write_text(f"#!/bin/bash\ntrap 'rm -f {pidfile}; exit 0' TERM\necho $$ > {pidfile}\n"
                    "while :; do sleep 0.05; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    daemon = subprocess.Popen([str(fake)], start_new_session=True)
    deadline = time.time() + 10
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.05)
    result = subprocess.run(["bash", str(SCRIPTS / "stop.sh")], env={**os.environ, "NFS_SLURM_DIR": str(state)},
                            capture_output=True, text=True, timeout=60)
    assert daemon.wait(timeout=10) == 0
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.splitlines() == [f"stop.sh: stopping munged (pid {daemon.pid})",
                                          f"stop.sh: stopped (state kept in {state})"]
