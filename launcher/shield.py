"""`python -m launcher.shield --signals USR2,TERM,INT -- CMD ...`: exec CMD deaf to the stop signals.

CMD is torchrun's agent. Slurm signals every process of a step (preemption, scancel, time
limit), and torchrun would die of SIGUSR2, or on SIGTERM kill its workers 30 s later whether
or not their checkpoint is written. Ignored dispositions survive exec, and torchrun's
`--signals-to-handle` (read from PET_SIGNALS_TO_HANDLE; older versions read
TORCHELASTIC_SIGNALS_TO_HANDLE) keeps it from installing its own handlers for them, so the
agent carries on while the workers (which handle the signals) checkpoint and exit 75.
The agent dies with its parent (SIGKILL), so a killed supervisor leaves no agent behind; the
workers then get their stop signal from their own parent-death setting.
"""
import os
import signal
import sys

from launcher import signals

TORCHRUN_HANDLES = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")   # torchrun's default set


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 4 or args[0] != "--signals" or args[2] != "--":
        sys.exit("usage: python -m launcher.shield --signals USR2,TERM,INT -- COMMAND [ARGS...]")
    names = args[1].split(",")
    signals.ignore(names)
    ignored = {"SIG" + name for name in names}
    handled = ",".join(s for s in TORCHRUN_HANDLES if s not in ignored)
    os.environ.update(PET_SIGNALS_TO_HANDLE=handled, TORCHELASTIC_SIGNALS_TO_HANDLE=handled)
    signals.die_with_parent(signal.SIGKILL)
    os.execvp(args[3], args[3:])


if __name__ == "__main__":
    main()
