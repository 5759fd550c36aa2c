"""One attempt of one shard of a stage: its typed ledger record, and the one function both
supervisors (local and Slurm) call when it ends, so the record and the restart decision are
written and taken in one place."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from . import exitcodes, failures, policy
from .plan import StagePlan
from .runs import RunDir


@dataclass
class AttemptRecord:
    """The ledger record `ledger/<stage>/shard-<i>-attempt-<k>.json`."""
    stage: str
    shard: int
    attempt: int
    backend: str
    job_id: str
    nodes: str | None
    start: float
    checkpoint_step: int | None
    world_size: int | None = None   # ranks of the attempt (a resume may change it: the reshard)
    state: str = "running"
    end: float | None = None
    exit_code: int | None = None
    outcome: str | None = None
    error: str | None = None
    where: str | None = None        # file:line in function that raised `error`
    signal: str | None = None
    reason: str | None = None
    extra: dict = field(default_factory=dict)   # backend-specific: restart_count, step_command...

    @property
    def key(self) -> str:
        return f"shard-{self.shard}-attempt-{self.attempt}"

    def as_json(self) -> dict:
        data = asdict(self)
        return {"kind": "attempt", **{k: v for k, v in data.items() if k != "extra"}, **self.extra}

    def write(self, run: RunDir) -> None:
        """Record the start (state running); a failure here ends the supervisor, as it should."""
        run.record(self.stage, self.key, self.as_json())


# What a backend does with a CONTINUE decision: restart locally (as is), requeue on Slurm.
# It gets the decision and whether the attempt stopped on a stop request; returns (action, reason).
ContinueHook = Callable[[policy.Decision, bool], "tuple[str, str]"]


def finish_attempt(run: RunDir, stage: StagePlan, record: AttemptRecord, returncode: int, *,
                   end: float, operator_stop: bool = False, on_continue: ContinueHook | None = None,
                   failure: str | None = None, echo: Callable[[str], None] = print) -> policy.Decision:
    """Read rank 0's outcome, decide (policy.decide), record the end, print one line (and under
    it the failed rank's exception: where it was raised, type, message); the decision returned
    is the one recorded (after `on_continue`, if the policy said continue).
    `failure`: what the supervisor itself found (a hang); it replaces the outcome's error."""
    outcome = run.read_outcome(stage.name, record.shard, record.attempt) or {}
    if failure is not None:
        outcome = {**outcome, "exit": returncode or exitcodes.FAILED, "error": failure}
    code = outcome.get("exit", returncode)
    if code == exitcodes.OK and returncode != 0:
        code = returncode                 # rank 0 finished but another rank did not
    if code not in (exitcodes.OK, exitcodes.STOPPED_FOR_REQUEUE) and "error" not in outcome \
            and (failed := run.first_rank_failure(stage.name, record.shard, record.attempt)):
        outcome = {**outcome, "error": f"rank {failed['rank']}: {failed['error']}", "where": failed.get("where")}
    previous = run.attempts(stage.name, record.shard)[-2:-1]
    step = run.checkpoint_step(stage.name)
    decision = policy.decide(
        code, error=outcome.get("error"), checkpoint_step=step, restarts_used=record.attempt,
        max_restarts=stage.max_restarts, previous=previous[0] if previous else None,
        cancel_requested=run.cancel_requested, operator_stop=operator_stop)
    if decision.action == policy.CONTINUE and on_continue is not None:
        decision = policy.Decision(*on_continue(decision, code == exitcodes.STOPPED_FOR_REQUEUE))
    record.end, record.exit_code, record.outcome = end, code, exitcodes.describe(code)
    record.error, record.where, record.signal = outcome.get("error"), outcome.get("where"), outcome.get("signal")
    record.checkpoint_step, record.state, record.reason = step, decision.action, decision.reason
    problem = run.try_record(stage.name, record.key, record.as_json())
    for line in ([problem] if problem else []) + run.quarantined_since(stage.name, record.start):
        echo(line)
    label = f"shard {record.shard} " if stage.array else ""
    echo(f"{label}attempt {record.attempt}: {exitcodes.describe(code)} -> "
         f"{decision.action} ({decision.reason})")
    for line in failures.lines(outcome):
        echo(line)
    return decision
