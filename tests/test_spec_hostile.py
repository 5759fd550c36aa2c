"""Specs written to hurt the launcher are refused like any broken spec: `python -m launcher
validate` exits 2 at once with `file:line: field: message`, never a traceback, a hang or a
Python object built from a tag.
"""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = "stages:\n  a: {task: diagnose.items}\n"
PROBLEM = re.compile(r"^\S+:\d+: \S+: \S")


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def refused(spec: Path, timeout: float = 60) -> list[str]:
    """The lines `validate` printed, after checking that it refused the spec (exit 2) and
    printed nothing but `file:line: field: message` lines."""
    result = subprocess.run([sys.executable, "-m", "launcher", "validate", str(spec)], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert lines and all(PROBLEM.match(line) for line in lines), result.stderr
    return lines


def alias_bomb(levels: int = 9) -> str:
    """'Billion laughs': each level is a list of ten aliases of the level below, 10**9 strings."""
    lines = ["name: t", 'l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n" + STAGE


# -- aliases -----------------------------------------------------------------------------------
def test_a_yaml_alias_bomb_is_refused_within_a_second_with_file_and_line(tmp_path):
    """Loose bound on purpose: refusing takes milliseconds, while expanding the aliases took
    minutes and gigabytes (killed after 60 s at 3.6 GB before this was fixed)."""
    spec = write(tmp_path, "bomb.yaml", alias_bomb())
    lines = refused(spec, timeout=10)
    # l0..l2 repeat 1,221 values; the 9th alias on line 5 (l3: 1,111 values each) passes 10,000.
    assert lines == [f"{spec}:5: <yaml>: aliases repeat more than 10000 values in this file "
                     "(an alias bomb?): write the values out instead"]


def test_an_alias_inside_its_own_anchor_is_refused_with_file_and_line(tmp_path):
    spec = write(tmp_path, "loop.yaml", "name: t\nstages: &s\n  a: {task: diagnose.items, config: *s}\n")
    assert refused(spec) == [f"{spec}:3: <yaml>: alias *s is used inside its own anchor &s "
                             "(a value cannot contain itself)"]


def test_values_nested_deeper_than_a_hundred_levels_are_refused_with_file_and_line(tmp_path):
    spec = write(tmp_path, "deep.yaml", "name: t\nx: " + "[" * 5000 + "]" * 5000 + "\n" + STAGE)
    assert refused(spec, timeout=10) == [f"{spec}:2: <yaml>: values nest more than 100 levels deep"]


def test_anchors_aliases_and_merge_keys_still_work(tmp_path):
    spec = write(tmp_path, "ok.yaml", "name: t\nstages:\n"
                 "  a: {task: diagnose.items, checkpoint: &ck {every_steps: 5}}\n"
                 "  b: {task: diagnose.items, checkpoint: {<<: *ck, keep_last: 2}, after: [a]}\n")
    result = subprocess.run([sys.executable, "-m", "launcher", "validate", str(spec)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_merge_key_of_a_plain_value_is_refused_with_file_and_line(tmp_path):
    spec = write(tmp_path, "merge.yaml", "name: t\nenv: {<<: 5}\n" + STAGE)
    assert refused(spec) == [f"{spec}:2: <yaml>: expected a mapping or list of mappings for merging, "
                             "but found scalar"]


# -- size and encoding -------------------------------------------------------------------------
def test_a_file_larger_than_128_kib_is_refused_before_it_is_parsed(tmp_path):
    """PyYAML reads about 0.25 MB a second: a 50 MB 'spec' would keep validate busy for minutes."""
    spec = write(tmp_path, "huge.yaml", "name: t\n" + STAGE + "# padding\n" * 20_000)
    assert refused(spec, timeout=10) == [f"{spec}:1: <yaml>: larger than 128 KiB: not a job spec"]


def test_a_file_that_is_not_utf8_is_refused_at_the_line_of_its_first_bad_byte(tmp_path):
    spec = write(tmp_path, "latin1.yaml", b"name: t\n" + STAGE.encode() + b"  # caf\xe9\n")
    assert refused(spec) == [f"{spec}:4: <yaml>: not UTF-8: byte 0xe9 at offset 51; "
                             "save the file as UTF-8"]


def test_a_control_character_is_refused_with_file_and_line(tmp_path):
    spec = write(tmp_path, "bell.yaml", "name: t\nrun_root: r\x07\n" + STAGE)
    assert refused(spec) == [f"{spec}:2: <yaml>: character 0x07 is not allowed in YAML"]


# -- tags --------------------------------------------------------------------------------------
def test_a_python_tag_on_a_scalar_is_refused_with_file_and_line(tmp_path):
    spec = write(tmp_path, "name.yaml", "name: !!python/name:os.system t\n" + STAGE)
    lines = refused(spec)
    assert lines == [f"{spec}:1: <yaml>: tag !!python/name:os.system is not allowed: spec values are "
                     "strings, numbers, true/false, null, lists and mappings (quote a value to keep it as text)"]


def test_a_python_tag_on_a_list_is_refused_not_dropped(tmp_path):
    spec = write(tmp_path, "tuple.yaml", "name: t\nstages:\n  a:\n    task: diagnose.items\n"
                 "    after: !!python/tuple [b]\n  b: {task: diagnose.items}\n")
    assert refused(spec)[0].startswith(f"{spec}:5: <yaml>: tag !!python/tuple is not allowed")


def test_a_python_tag_on_a_mapping_is_refused_not_dropped(tmp_path):
    spec = write(tmp_path, "object.yaml", "name: t\nstages:\n  a:\n    task: diagnose.items\n"
                 "    config: !!python/object:argparse.Namespace {x: 1}\n")
    assert refused(spec)[0].startswith(f"{spec}:5: <yaml>: tag !!python/object:argparse.Namespace is not "
                                       "allowed")


def test_a_local_tag_is_refused_with_file_and_line(tmp_path):
    spec = write(tmp_path, "local.yaml", "name: !secret t\n" + STAGE)
    assert refused(spec)[0].startswith(f"{spec}:1: <yaml>: tag !secret is not allowed")


def test_a_date_is_refused_because_no_run_could_record_it(tmp_path):
    """YAML reads an unquoted 2024-01-01 as a date, which plan.json cannot hold: before this,
    validate accepted it and submit died with a traceback after creating the run directory."""
    spec = write(tmp_path, "date.yaml", "name: t\nstages:\n  a:\n    task: diagnose.items\n"
                                        "    config: {since: 2024-01-01}\n")
    assert refused(spec)[0].startswith(f"{spec}:5: <yaml>: tag !!timestamp is not allowed")


def test_text_that_an_explicit_standard_tag_cannot_read_is_refused(tmp_path):
    spec = write(tmp_path, "bool.yaml", "name: t\nlocal: {max_restarts: !!bool maybe}\n" + STAGE)
    assert refused(spec) == [f"{spec}:2: <yaml>: cannot read 'maybe' as !!bool"]


def test_an_integer_too_long_for_python_is_refused(tmp_path):
    spec = write(tmp_path, "long.yaml", "name: t\nlocal: {max_restarts: " + "9" * 5000 + "}\n" + STAGE)
    assert refused(spec) == [f"{spec}:2: <yaml>: cannot read '{'9' * 40}...' as !!int"]


def test_a_standard_tag_is_still_honoured(tmp_path):
    spec = write(tmp_path, "str.yaml", "name: !!str 123\n" + STAGE)
    result = subprocess.run([sys.executable, "-m", "launcher", "validate", str(spec)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- sizes -------------------------------------------------------------------------------------
def test_an_array_of_a_billion_shards_is_refused_like_the_size_form(tmp_path):
    spec = write(tmp_path, "array.yaml", "name: t\nstages:\n  a:\n    task: diagnose.items\n"
                                         "    array: 1000000000\n")
    assert refused(spec) == [f"{spec}:5: stages.a.array: must be at most 100000, got 1000000000"]


# -- includes ----------------------------------------------------------------------------------
def test_a_problem_in_an_included_file_names_the_including_line_too(tmp_path):
    base = write(tmp_path, "base.yaml", "slurm:\n  signal_seconds: 5\n")
    top = write(tmp_path, "top.yaml", "include: base.yaml\nname: t\n" + STAGE)
    assert refused(top) == [f"{base}:2: slurm.signal_seconds: must be at least 10, got 5 "
                            f"(included from {top}:1)"]


def test_a_syntax_error_in_an_included_file_names_the_including_line_too(tmp_path):
    write(tmp_path, "base.yaml", "name: t\n")
    broken = write(tmp_path, "broken.yaml", "slurm: [\n")
    top = write(tmp_path, "top.yaml", "include:\n  - base.yaml\n  - broken.yaml\n" + STAGE)
    [line] = refused(top)
    assert line.startswith(f"{broken}:2: <yaml>: ") and line.endswith(f" (included from {top}:3)")


def test_a_problem_two_includes_deep_names_every_including_line(tmp_path):
    base = write(tmp_path, "base.yaml", "name: t\nslurm: {signal_seconds: 5}\n")
    mid = write(tmp_path, "mid.yaml", "include: base.yaml\n")
    top = write(tmp_path, "top.yaml", "include: mid.yaml\n" + STAGE)
    assert refused(top) == [f"{base}:2: slurm.signal_seconds: must be at least 10, got 5 "
                            f"(included from {mid}:1, from {top}:1)"]
