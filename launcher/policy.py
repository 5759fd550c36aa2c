"""What to do after an attempt ends: finish, continue, or give up. Shared by both backends.

One rule set, so a run behaves the same under Slurm and on a laptop: a checkpointed stop is
continued, failures are retried up to a cap, and the same failure twice in a row without new
checkpoint progress stops the run with its reason instead of looping.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import exitcodes

COMPLETED = "completed"
CONTINUE = "continue"          # restart locally / requeue on Slurm
STOPPED = "stopped"            # stopped on the operator's request; `resume` continues it
CANCELLED = "cancelled"
GAVE_UP = "gave-up"


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str


def decide(exit_code: int, *, error: str | None, checkpoint_step: int | None, restarts_used: int,
           max_restarts: int, previous: dict | None, cancel_requested: bool,
           operator_stop: bool) -> Decision:
    """Decide after one attempt. `previous` is the ledger record of the attempt before it."""
    if exit_code == exitcodes.OK:
        return Decision(COMPLETED, "the task finished")
    if cancel_requested:
        return Decision(CANCELLED, "cancelled by the operator")
    if operator_stop:          # whatever the ranks did, nothing restarts until `resume`
        how = "" if exit_code == exitcodes.STOPPED_FOR_REQUEUE else f" ({exitcodes.describe(exit_code)})"
        return Decision(STOPPED, f"stopped on request{how} at checkpoint step {checkpoint_step}")
    if restarts_used >= max_restarts:
        return Decision(GAVE_UP, f"{exitcodes.describe(exit_code)} and the restart cap "
                                 f"({max_restarts}) is used up")
    if exit_code != exitcodes.STOPPED_FOR_REQUEUE and previous is not None:
        same_failure = (previous.get("exit_code") == exit_code
                        and previous.get("error") == error
                        and previous.get("checkpoint_step") == checkpoint_step)
        if same_failure:
            return Decision(GAVE_UP, f"failed the same way twice in a row at checkpoint step "
                                     f"{checkpoint_step}: {error or exitcodes.describe(exit_code)}")
    if exit_code == exitcodes.STOPPED_FOR_REQUEUE:
        return Decision(CONTINUE, f"checkpointed at step {checkpoint_step} on a stop signal")
    return Decision(CONTINUE, f"{exitcodes.describe(exit_code)}; retrying from checkpoint step "
                              f"{checkpoint_step}")
