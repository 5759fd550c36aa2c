"""What every benchmark records beside its numbers, so a result can be traced and reproduced.

`metadata()` gives the git commit, date, machine and package versions; `write()` stores a
result JSON atomically under bench/results/; `table()` formats rows for the terminal;
`run_and_exit(main)` runs a benchmark and ends its process at once, whatever it left running.
"""
from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))           # `python bench/x.py` finds the project without an install

from launcher.atomic import write_json  # noqa: E402


def git_commit() -> str:
    """BENCH_GIT_COMMIT when set (the GPU machine's copy may hold a stale .git), else HEAD (+dirty
    when code differs)."""
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "launcher", "nerffacespeech", "bench"],
                           capture_output=True, text=True, cwd=REPO).stdout.strip()
    return result.stdout.strip() + ("+dirty" if dirty else "")


def machine() -> dict:
    """Host, CPU model and count, memory, Python, and the GPU when torch sees one."""
    info = {"host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        with open("/proc/meminfo") as meminfo:
            info["memory_gb"] = round(int(meminfo.readline().split()[1]) / 2 ** 20, 1)
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
            info["cuda"] = torch.version.cuda
    return info


def versions(*names: str) -> dict:
    """Installed versions of torch, deepspeed and the given packages (None when missing)."""
    found = {}
    for name in ("torch", "deepspeed", "safetensors", *names):
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            found[name] = None
    return found


def metadata(config: dict, *packages: str) -> dict:
    """The header every result JSON starts with."""
    return {"git_commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            "load_average": os.getloadavg(), "versions": versions(*packages), "argv": sys.argv,
            "config": config}


def accelerator_tag() -> str:
    """'cpu' or the GPU's name as a file-name tag, e.g. 'nvidia-h100-80gb-hbm3'."""
    gpu = machine().get("gpu")
    return re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") if gpu else "cpu"


def write(name: str, report: dict, output: Path | None = None) -> Path:
    """Write `report` to `output` or bench/results/<name>-<accelerator>.json, atomically."""
    path = output or RESULTS / f"{name}-{accelerator_tag()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, json.loads(json.dumps(report, default=str)))
    print(f"wrote {path}")
    return path


def table(rows: list[tuple], header: tuple) -> str:
    """Left-aligned text table with a rule under the header."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_and_exit(main: Callable[[], int | None]) -> None:
    """Run a benchmark's `main`, then end the process at once with its exit code (1 after a
    traceback), naming any non-daemon thread or child process still alive: once its results are
    written, a benchmark must not sit on its time limit (the checkpoint bench once did, on the
    H200, until its 90 s limit killed it). Skips interpreter teardown, as the launcher's ranks do."""
    try:
        code = main() or 0
    except SystemExit as stop:                  # argparse's usage errors, an explicit sys.exit
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    lingering = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    children = _child_processes()
    if lingering or children:
        print(f"exiting with non-daemon threads {lingering} and child processes {children} alive",
              file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _child_processes() -> list[str]:
    """'pid command' of every process below this one."""
    import psutil

    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            children.append(f"{child.pid} {' '.join(child.cmdline()[:3])}")
        except psutil.Error:
            pass            # ended meanwhile
    return children
