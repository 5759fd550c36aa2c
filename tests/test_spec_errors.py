"""Every broken spec in tests/specs/bad is refused by `python -m launcher validate` with a
one-line `file:line: field: message` and exit code 2.

Each file's first line says what must be printed: `# expect: LINE: FIELD: MESSAGE-START`.
"""
import subprocess
import sys
from pathlib import Path

import pytest

BAD = sorted((Path(__file__).parent / "specs" / "bad").glob("*.yaml"))


def expected_line(spec: Path) -> str:
    header = spec.read_text().splitlines()[0]
    assert header.startswith("# expect: "), f"{spec} lacks its '# expect:' header"
    line, rest = header[len("# expect: "):].split(": ", 1)
    return f"{spec}:{line}: {rest}" if line != "0" else f"{spec}: {rest}"


def validate(spec: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", "validate", str(spec)],
                          capture_output=True, text=True, timeout=60)


def test_the_corpus_has_at_least_twenty_broken_specs():
    assert len(BAD) >= 20


@pytest.mark.parametrize("spec", BAD, ids=[p.stem for p in BAD])
def test_broken_spec_is_refused_with_file_line_and_field(spec):
    result = validate(spec)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected_line(spec) in result.stderr, result.stderr
    assert all(line.startswith(str(spec)) for line in result.stderr.splitlines()), result.stderr
