"""Progress while a stage runs: the line built from metrics.jsonl, how a terminal and a log show
it, the supervisor's live line under a real pseudo-terminal, and `status --watch`."""
import io
import os
import pty
import re
import subprocess
import sys
import time

from launcher import progress
from tests.launcher_helpers import launcher, training_spec, write_spec

TOY = "launcher.diagnose_train:main"


def rows(steps: range, total: int | None = 100, rate: float = 2.0, **scalars) -> list[dict]:
    return [{"step": s, "time": float(s), "steps_per_s": rate, **({"total_steps": total} if total else {}),
             **scalars} for s in steps]


def test_a_running_stage_shows_step_of_total_rate_eta_and_losses():
    line = progress.from_rows(rows(range(1, 41), loss_g=0.41234, loss_d=1.5, lr=0.002)).line()
    assert line == "step 40/100 (40%), 2 steps/s, ETA 0m 30s, loss_g 0.412, loss_d 1.5"


def test_the_tasks_own_rate_is_shown_and_the_config_gives_the_total_when_the_loop_does_not():
    line = progress.from_rows(rows(range(1, 11), total=None, images_per_s=43.14, kimg=0.32), {"steps": 20}).line()
    assert line == "step 10/20 (50%), 43.1 images/s, ETA 0m 05s, kimg 0.32"


def test_the_augmentation_probability_is_shown_and_an_evaluation_line_does_not_hide_the_scalars():
    """StyleNeRF's `augment_p` (ADA's p) is shown with the losses and kimg, also when the last line
    is a snapshot's metrics at the same step."""
    training = rows(range(1, 11), loss_g=0.5, loss_d=1.25, augment_p=0.125, kimg=0.16)
    evaluation = {"step": 10, "time": 10.5, "total_steps": 100, "swd": 0.02}
    line = progress.from_rows(training + [evaluation]).line(running=False)
    assert line == "step 10/100 (10%), loss_g 0.5, loss_d 1.25, augment_p 0.125, kimg 0.16"


def test_a_stage_that_is_not_running_shows_no_rate_and_no_eta():
    """A finished stage's last steps_per_s is often 0: neither '0 steps/s' nor an ETA is true then."""
    finished = progress.from_rows(rows(range(99, 101), rate=0.0, loss=0.5))
    assert finished.line(running=False) == "step 100/100 (100%), loss 0.5"
    assert finished.line() == "step 100/100 (100%), loss 0.5"          # no rate known: none shown
    stopped = progress.from_rows(rows(range(1, 3), rate=2.0))          # e.g. cancelled mid-run
    assert stopped.line(running=False) == "step 2/100 (2%)"


def test_a_torn_last_line_is_skipped(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "total_steps": 4}\n{"step": 2, "total_steps": 4}\n{"step": 3, "tot')
    assert progress.from_rows(progress.tail_rows(metrics)).line() == "step 2/4 (50%)"
    assert progress.tail_rows(tmp_path / "none.jsonl") == []


def test_a_terminal_rewrites_the_progress_line_in_place_and_keeps_it_when_a_message_follows():
    out = io.StringIO()
    console = progress.Console(out, interactive=True)
    console(progress.ProgressLine("train", "step 1/2"))
    console(progress.ProgressLine("train", "step 2/2"))
    console("[train] completed")
    assert out.getvalue() == "\r\033[K[train] step 1/2\r\033[K[train] step 2/2\n[train] completed\n"


def test_a_log_gets_plain_progress_lines_at_most_every_interval_per_stage():
    out = io.StringIO()
    console = progress.Console(out, interactive=False, plain_every=0.3)
    for step in range(1, 5):
        console(progress.ProgressLine("train", f"step {step}/4"))
    console(progress.ProgressLine("eval", "step 1/1"))
    time.sleep(0.35)
    console(progress.ProgressLine("train", "step 4/4"))
    assert out.getvalue().splitlines() == ["[train] step 1/4", "[eval] step 1/1", "[train] step 4/4"]


def test_a_foreground_run_on_a_terminal_shows_a_live_progress_line_then_status_watch_ends(tmp_path):
    """The real CLI under a pseudo-terminal: the supervisor's line for the running stage is
    rewritten in place (step/total, rate, ETA, loss from what rank 0 writes)."""
    spec = write_spec(tmp_path, training_spec("progress", TOY, {"steps": 12, "sleep_per_step": 0.4}))
    output = _run_on_a_terminal([sys.executable, "-m", "launcher", "submit", str(spec)], cwd=tmp_path)
    live = re.findall(r"\r\x1b\[K\[train\] (step \d+/12 \(\d+%\)[^\r\n]*)", output)
    assert len(live) >= 2, output
    assert any(re.fullmatch(r"step \d+/12 \(\d+%\), [0-9.]+ items/s, ETA \dm \d\ds, loss [0-9.e+-]+", s)
               for s in live), live
    assert "[train] completed" in output
    run = re.search(r"^run (\S+)", output, re.M).group(1)
    watched = launcher("status", run, "--watch", "0.1", cwd=tmp_path, check=True, timeout=30).stdout
    assert "nothing of the run is live: final" in watched and watched.count(f"run {run}") == 1
    assert re.search(r"train .* completed .* step 12/12 \(100%\), loss", watched), watched


def _run_on_a_terminal(argv: list[str], cwd, timeout: float = 240) -> str:
    """Run `argv` with a pseudo-terminal as stdout (isatty() is true); all it wrote."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, cwd=cwd, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:                 # EIO: the child side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    process.wait(timeout=30)
    return b"".join(chunks).decode(errors="replace")
