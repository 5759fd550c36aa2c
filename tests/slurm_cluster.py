"""Pytest plugin: the real local Slurm cluster of slurm/local-cluster/.

Load it with ``pytest_plugins = ["tests.slurm_cluster"]`` in the root conftest.py.
The session-scoped fixture ``slurm_cluster`` runs install.sh and start.sh once per
session (both idempotent; about 0.1-1 s when the cluster already runs) and yields a
:class:`SlurmCluster` with query helpers. The cluster is left running afterwards.

The session-scoped fixture ``slurm_cluster_with_accounting`` starts a second, private
cluster with slurmdbd + MariaDB (``start.sh --with-accounting``: own state dir, ports and
slurm.conf, so the shared one is never touched) and stops it at the end of the session
(unless it ran already: then another session started it and may still use it).

``NFS_SKIP_SLURM=1`` skips every test using the fixtures; otherwise a cluster that fails
to start is a test ERROR, never a silent skip.

Nothing here submits jobs: tests submit with the real sbatch/srun (or the launcher) and
use :meth:`SlurmCluster.wait_for` / :meth:`SlurmCluster.job` to follow them.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "slurm" / "local-cluster"
DEFAULT_STATE_DIR = "/tmp/nfs-slurm"

# Job states after which a job does not run again by itself.
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
})

_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/.\-]*)=")


def parse_record(line: str) -> dict[str, str]:
    """Parse one ``scontrol show ... -o`` line (``Key=Value Key=Value ...``).

    A value that contains spaces (e.g. a Command with arguments) keeps them: a
    value runs until the next ``Key=``.
    """
    line = line.strip()
    keys = list(_KEY.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        out.setdefault(m.group(1), line[m.end():end].strip())
    return out


@dataclass
class SlurmCluster:
    """Handle on the running local cluster (see docs/SLURM_LOCAL.md)."""

    state_dir: Path
    conf: Path
    nodes: list[str]
    partition: str = "debug"            # default partition, preemptable (GraceTime=20)
    urgent_partition: str = "urgent"    # PriorityTier=10: preempts jobs in `debug`
    partitions: list[str] = field(default_factory=lambda: ["debug", "urgent"])
    cpus_per_node: int = 8
    env: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------ commands
    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sinfo, squeue, scontrol, scancel, sacct ...)."""
        result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                                env=self.env, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    # ------------------------------------------------------------ queries
    def jobs(self, job_id: str | int) -> list[dict[str, str]]:
        """``scontrol show job -o JOB``: one dict per record ([] if slurmctld forgot the
        job). An array's parent id gives one record per task; ``J_T`` one task."""
        result = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr or "Invalid job id" in result.stdout:
                return []
            raise AssertionError(f"scontrol show job {job_id} failed: {result.stderr}")
        return [parse_record(line) for line in result.stdout.splitlines() if line.strip()]

    def job(self, job_id: str | int) -> dict[str, str] | None:
        """The one record of a job (or array task), None if slurmctld no longer knows it."""
        records = self.jobs(job_id)
        return records[0] if records else None

    def state(self, job_id: str | int) -> str | None:
        info = self.job(job_id)
        return info["JobState"] if info else None

    def completions(self, job_id: str | int) -> list[dict[str, str]]:
        """Job completion records (jobcomp/filetxt, what ``sacct -c`` reads): one per
        run of the job, in order. A preempted run reads JobState=PREEMPTED, a run ended
        by ``scontrol requeue`` reads JobState=PENDING, the final run its end state."""
        path = self.state_dir / "log" / "jobcomp.txt"
        if not path.exists():
            return []
        want = f"JobId={job_id} "
        return [parse_record(line) for line in path.read_text(errors="replace").splitlines()
                if line.startswith(want)]

    def wait_for(self, job_id: str | int, states: str | Iterable[str], timeout: float = 60,
                 interval: float = 0.5, fail_fast: bool = True) -> dict[str, str]:
        """Poll ``scontrol show job -o`` until the job's JobState is one of ``states``;
        return its last record (a dict of every field).

        With ``fail_fast`` a terminal state that is not wanted (e.g. FAILED while
        waiting for RUNNING) raises at once. A job that slurmctld already purged
        (MinJobAge=60) is looked up in the job completion log instead; that record has
        fewer fields. Raises AssertionError with the last record on timeout.
        """
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        last: dict[str, str] | None = None
        while True:
            records = self.jobs(job_id)
            if records:
                last = records[0]
                if all(r.get("JobState") in wanted for r in records):
                    return last
                bad = [r for r in records if r.get("JobState") in TERMINAL_STATES - wanted]
                if fail_fast and bad:
                    raise AssertionError(f"job {job_id} reached {bad[0].get('JobState')} "
                                         f"(Reason={bad[0].get('Reason')}) while waiting for "
                                         f"{sorted(wanted)}: {bad[0]}")
            else:
                done = self.completions(job_id)
                if done:
                    last = done[-1]
                    if last.get("JobState") in wanted:
                        return last
                    if fail_fast:
                        raise AssertionError(f"job {job_id} is gone from slurmctld; its last "
                                             f"completion record says {last.get('JobState')}, "
                                             f"not {sorted(wanted)}: {last}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for job {job_id} to "
                                     f"reach {sorted(wanted)}; last record: {last}")
            time.sleep(interval)

    def wait_for_array(self, job_id: str | int, states: str | Iterable[str], timeout: float = 60,
                       interval: float = 0.5) -> list[dict[str, str]]:
        """Like wait_for, for an array's parent id: every task in ``states``."""
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        records: list[dict[str, str]] = []
        while True:
            records = self.jobs(job_id)
            if records and all(r.get("JobState") in wanted for r in records):
                return records
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for array {job_id} "
                                     f"to reach {sorted(wanted)}: "
                                     f"{[(r.get('JobId'), r.get('JobState')) for r in records]}")
            time.sleep(interval)

    def node_states(self) -> dict[str, str]:
        """sinfo's compact state per node ('idle', 'mix', 'alloc', 'idle*' ...)."""
        out = self.run("sinfo", "-h", "-N", "-p", self.partition, "-o", "%N %t").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def cancel(self, *job_ids: str | int) -> None:
        if job_ids:
            self.run("scancel", *map(str, job_ids), check=False)

    def log_tail(self, lines: int = 30) -> str:
        """The tail of slurmctld's log, for assertion messages."""
        path = self.state_dir / "log" / "slurmctld.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# The private accounting cluster: its own state dir, conf and ports (the shared one uses
# /tmp/nfs-slurm, 6817, 6831.., 6819, 3307), one node (array tasks run side by side on it).
ACCOUNTING_ENV = {
    "NFS_SLURM_DIR": "/tmp/nfs-slurm-acct", "NFS_SLURM_CONF": "/tmp/nfs-slurm-acct/etc/slurm.conf",
    "NFS_SLURM_NODES": "1", "NFS_SLURM_CTLD_PORT": "6917", "NFS_SLURM_SLURMD_PORT_BASE": "6930",
    "NFS_SLURM_DBD_PORT": "6919", "NFS_SLURM_MYSQL_PORT": "3317",
}


def _run_script(script: str, args: list[str], env: dict[str, str], timeout: float) -> str:
    """Run one slurm/local-cluster script; its stdout. A failure fails the test (no skip)."""
    try:
        result = subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True,
                                timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"slurm/local-cluster/{script} timed out after {timeout}s:\n"
                    f"{exc.stdout or ''}{exc.stderr or ''}", pytrace=False)
    if result.returncode != 0:
        pytest.fail(f"slurm/local-cluster/{script} exited {result.returncode} "
                    f"(set NFS_SKIP_SLURM=1 to skip Slurm tests):\n"
                    f"{result.stdout}{result.stderr}", pytrace=False)
    return result.stdout


def _start_cluster(env: dict[str, str], *flags: str) -> SlurmCluster:
    _run_script("install.sh", list(flags), env, 900)
    out = _run_script("start.sh", list(flags), env, 240)
    state_dir = Path(env.get("NFS_SLURM_DIR", DEFAULT_STATE_DIR))
    conf = Path("/etc/slurm/slurm.conf")
    m = re.search(r"^export SLURM_CONF=(\S+)$", out, re.M)
    if m:
        conf = Path(m.group(1))
        env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(state_dir=state_dir, conf=conf, nodes=[], env=env)
    cluster.nodes = sorted(cluster.node_states(), key=lambda n: int(re.sub(r"\D", "", n) or 0))
    node = cluster.run("scontrol", "show", "node", "-o", cluster.nodes[0]).stdout
    cluster.cpus_per_node = int(parse_record(node).get("CPUTot", "8"))
    return cluster


def _skip_unless_enabled() -> None:
    if os.environ.get("NFS_SKIP_SLURM") == "1":
        pytest.skip("NFS_SKIP_SLURM=1: the local Slurm cluster is disabled")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The running local Slurm cluster (started if needed, left running)."""
    _skip_unless_enabled()
    cluster = _start_cluster(dict(os.environ))
    if "SLURM_CONF" in cluster.env:
        # Launcher code and plain subprocesses of the tests must find it too.
        os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    yield cluster


@pytest.fixture(scope="session")
def slurm_cluster_with_accounting() -> Iterator[SlurmCluster]:
    """A private cluster with accounting (slurmdbd + MariaDB), started for the session and
    stopped after it (left running if it already ran when the session began). Its commands need ``cluster.env`` (SLURM_CONF names its conf); a test
    that submits through the launcher sets SLURM_CONF itself (monkeypatch)."""
    _skip_unless_enabled()
    env = {**os.environ, **ACCOUNTING_ENV}
    running_before = _controller_alive(Path(env["NFS_SLURM_DIR"]))
    try:
        yield _start_cluster(env, "--with-accounting")
    finally:
        if not running_before:      # another session's tests may still be using it
            _run_script("stop.sh", [], env, 120)


def _controller_alive(state_dir: Path) -> bool:
    """Whether the slurmctld named by the state dir's PID file runs."""
    try:
        pid = int((state_dir / "run" / "slurmctld.pid").read_text())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "slurmctld"
    except (OSError, ValueError):
        return False
