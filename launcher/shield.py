"""`python -m launcher.shield -- CMD ...`: exec CMD with the warning signal ignored.

torchrun's agent would die of SIGUSR2's default action when Slurm signals every process of
a step; an ignored disposition survives exec, so the agent carries on while its workers,
which install their own handler, checkpoint and exit.
"""
import os
import signal
import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit("usage: python -m launcher.shield -- COMMAND [ARGS...]")
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
