"""Exit codes shared by job processes, supervisors and the ledger."""

OK = 0
FAILED = 1
BAD_SPEC = 2
# A task stopped on a stop request after committing a complete checkpoint and wants to be
# continued (requeued on Slurm, restarted by the local supervisor). 75 is EX_TEMPFAIL.
STOPPED_FOR_REQUEUE = 75


def describe(code: int) -> str:
    """A word for an exit code, as the ledger and `status` print it."""
    if code == OK:
        return "completed"
    if code == STOPPED_FOR_REQUEUE:
        return "stopped-for-requeue"
    if code < 0 or code > 128:
        signum = -code if code < 0 else code - 128
        return f"killed-by-signal-{signum}"
    return f"failed-exit-{code}"
