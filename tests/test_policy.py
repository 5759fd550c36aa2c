"""The after-attempt decision (launcher/policy.py), shared by the local and Slurm supervisors."""
from launcher import exitcodes, policy


def decide(code: int, **overrides) -> policy.Decision:
    args = dict(error=None, checkpoint_step=12, restarts_used=0, max_restarts=3, previous=None,
                cancel_requested=False, operator_stop=False)
    return policy.decide(code, **{**args, **overrides})


def test_an_operator_stop_is_recorded_as_stopped_even_when_the_ranks_did_not_exit_75():
    """A second Ctrl-C can end ranks by SIGTERM mid-save: nothing restarts, so the record must
    not say "continue"; `resume` continues from the last committed checkpoint."""
    for code in (exitcodes.STOPPED_FOR_REQUEUE, exitcodes.FAILED, -15):
        assert decide(code, operator_stop=True).action == policy.STOPPED


def test_a_checkpointed_stop_without_an_operator_is_continued():
    assert decide(exitcodes.STOPPED_FOR_REQUEUE).action == policy.CONTINUE
