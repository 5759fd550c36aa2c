"""Which signals stop a stage, derived from one field, and the process-level tools around them.

The spec's `slurm.signal` (the warning signal, USR2 by default) is the only setting: Slurm
sends it before the time limit (`--signal=<it>@N`), the local supervisor sends it on the first
Ctrl-C, and every rank stops on it, on SIGTERM (what Slurm sends at preemption, `scancel` and
the time limit) and on SIGINT. Helpers of a rank (torchrun's agent, data-loader workers) ignore
all of them, so only the ranks decide when to stop: after their checkpoint is committed.
No torch here: the CLI and the supervisors import this.
"""
from __future__ import annotations

import ctypes
import os
import signal

# Warning signals the runtime handles. SIGUSR1 works but NCCL used it internally (submitit
# moved to SIGUSR2 for that reason); URG, CONT, KILL, STOP... are refused at validation.
WARNING_SIGNALS = ("USR2", "USR1", "TERM", "INT", "HUP")
DEFAULT_WARNING = "USR2"
ALWAYS_STOP = ("TERM", "INT")       # Slurm's preemption/scancel/time limit, and Ctrl-C
_PR_SET_PDEATHSIG = 1


def stop_signals(warning: str = DEFAULT_WARNING) -> list[str]:
    """The signals a rank stops on: the warning signal first, then SIGTERM and SIGINT."""
    return list(dict.fromkeys([warning, *ALWAYS_STOP]))


def number(name: str | int) -> int:
    """`"USR2"`, `"SIGUSR2"` or 12 -> 12."""
    if isinstance(name, int):
        return name
    return int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))


def ignore(names: list[str] | tuple[str, ...]) -> None:
    """Ignore `names` in this process; an ignored disposition survives fork and exec."""
    for name in names:
        signal.signal(number(name), signal.SIG_IGN)


def die_with_parent(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent exits (Linux).

    Returns False where unsupported, or when the parent is already gone (the caller then acts
    as if the signal had arrived).
    """
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return os.getppid() == parent and parent != 1
