"""`python -m launcher.relay PID USR2,TERM,INT`: pass the stop signals a job step receives to PID.

A single-node stage runs its ranks in the batch step, not under srun, because srun SIGKILLs
its whole step the moment it gets SIGTERM (scancel --full, a job termination, the end of a
time limit), before any rank could save. But Slurm sends the warning signal (`--signal=S@N`,
no `B:`), the preemption SIGTERM and `scancel --signal=S` to step processes only. So the
supervisor keeps this relay as a one-task step on its node: it forwards every stop signal to
the supervisor, which passes it to the ranks. The relay ends when PID does.
"""
import os
import signal
import sys
import time

from launcher import signals


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python -m launcher.relay PID USR2,TERM,INT")
    target = int(sys.argv[1])

    def forward(signum, frame) -> None:
        try:
            os.kill(target, signum)
        except ProcessLookupError:
            sys.exit(0)

    for name in sys.argv[2].split(","):
        signal.signal(signals.number(name), forward)
    print(f"[launcher.relay] forwarding {sys.argv[2]} to pid {target}", flush=True)
    while True:
        time.sleep(1)
        try:
            os.kill(target, 0)
        except ProcessLookupError:
            return


if __name__ == "__main__":
    main()
