"""Who may run a run: kernel file locks with a record of the holder, and orphan detection.

A lock is `flock` on a file in the run directory, so the kernel (or the NFS server's lease)
releases it the instant its holder dies, SIGKILL and zombies included: a dead holder is never
mistaken for a live one and needs no clean-up. Beside it, `<lock>.holder.json` says who holds
it (host, pid, since), for the refusal message. Processes of a run are recognised by the
`NFS_RUN_DIR` every stage process inherits, which lets a new supervisor find and stop a trainer
that outlived its supervisor before it starts another one.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import time
from pathlib import Path

from . import atomic


class LockHeld(RuntimeError):
    """Raised when another live process holds the lock; the message names it."""


class RunLock:
    """An exclusive lock on `path`, held from `acquire()` until `release()` or process exit."""

    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what            # e.g. "the local supervisor of run X", for messages
        self._fd: int | None = None

    @property
    def holder_path(self) -> Path:
        return self.path.with_name(self.path.name + ".holder.json")

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.5) -> "RunLock":
        """Take the lock, waiting up to `wait_s`; LockHeld (naming the holder) if it stays taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)   # close-on-exec: children never hold it
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise RuntimeError(f"cannot lock {self.path}: {error.strerror} (the run directory "
                                       f"must be on a filesystem with file locks)") from error
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockHeld(f"{self.what} is already running: held by {describe(self.holder())}") from None
                time.sleep(poll_s)
        self._fd = fd
        atomic.write_json(self.holder_path, {"host": socket.gethostname(), "pid": os.getpid(),
                                             "since": time.time(), "what": self.what})
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.holder_path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)          # releases the flock
        self._fd = None

    def holder(self) -> dict | None:
        try:
            return json.loads(self.holder_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_held(self) -> bool:
        """True if some live process holds the lock (a probe: takes and drops it when free)."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except OSError as error:
            return error.errno in (errno.EAGAIN, errno.EACCES)
        finally:
            os.close(fd)            # closing drops a lock the probe took

    def __enter__(self) -> "RunLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe(holder: dict | None) -> str:
    """Who holds a lock, from its holder record: "pid P on host H since T"."""
    if not holder:
        return "a process that left no record"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {since}"


def run_processes(run_dir: Path) -> list[int]:
    """PIDs of live processes on this host started for `run_dir` (their NFS_RUN_DIR), zombies excluded."""
    needle = f"NFS_RUN_DIR={run_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            if _is_zombie(int(entry)):
                continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc: torchrun starts its workers in sessions of
    their own, so a process-group signal would miss them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def signal_tree(root: int, signum: int) -> None:
    """Send `signum` to `root` and every descendant (those gone meanwhile are skipped)."""
    for pid in process_tree(root):
        _signal(pid, signum)


def stop_processes(pids: list[int], signum: int, grace_s: float, echo=print) -> list[int]:
    """Send `signum` (the warning signal: ranks checkpoint, helpers ignore it), wait up to
    `grace_s` for them to exit, then SIGKILL the rest. Returns the PIDs that had to be killed."""
    for pid in pids:
        _signal(pid, signum)
    deadline = time.monotonic() + grace_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if pid_alive(pid)]
    for pid in alive:
        echo(f"[launcher] pid {pid} did not stop within {grace_s:.0f} s: killed")
        _signal(pid, signal.SIGKILL)
    return alive


def pid_alive(pid: int) -> bool:
    """True for a live, non-zombie process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
