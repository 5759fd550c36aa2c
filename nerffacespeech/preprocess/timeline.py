"""Frame file names → places in time: file N is video frame N, the 40 ms of speech from (N−1)/25 s,
whatever files are missing around it, so a missing frame never shifts later frames against the audio.

Names must be 1-based frame numbers (00001.jpg, or unpadded 1.jpg; ordered by number, not by
name). A clip whose names are not (a non-number, 0, two files with one number) is refused as
`frame_names`. A run of missing numbers longer than `max_gap` is refused as `frame_gap`, at the
start too (frame 1 is the first 40 ms of the speech): that is a lost stretch or a cut, not a
dropped frame. Shorter gaps keep their place: those frames are absent, the others keep their times.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

SHOWN = 3                           # offending names quoted in a refusal


@dataclass(frozen=True)
class Frames:
    """The frames of one clip on its time line."""

    files: dict[int, Path]          # frame number → file, ascending numbers

    @property
    def length(self) -> int:
        """Frames on the time line: the last number (missing ones included)."""
        return max(self.files)

    @property
    def numbers(self) -> list[int]:
        return list(self.files)

    @property
    def missing(self) -> list[int]:
        return [n for n in range(1, self.length + 1) if n not in self.files]


def number_frames(key: str, paths: list[Path], max_gap: int) -> Frames:
    """The clip's frames by number; BadInput `frame_names` or `frame_gap` (see the module docstring)."""
    frames = Frames(_by_number(key, paths))
    too_long = [(a, b) for a, b in runs(frames.missing) if b - a + 1 > max_gap]
    if too_long:
        longest = max(b - a + 1 for a, b in too_long)
        raise BadInput("frame_gap", f"{key}: frames {', '.join(_span(a, b) for a, b in too_long)} are missing "
                                    f"({longest} in a row; max_frame_gap is {max_gap}; file numbers are "
                                    f"time slots from the start of the speech)")
    return frames


def runs(numbers: list[int]) -> list[tuple[int, int]]:
    """(first, last) of each run of consecutive numbers in an ascending list."""
    out: list[tuple[int, int]] = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def _by_number(key: str, paths: list[Path]) -> dict[int, Path]:
    """Files keyed by the frame number their name states; BadInput `frame_names` when a name
    states none, states 0, or states one already taken."""
    files: dict[int, Path] = {}
    problems: list[str] = []
    for path in sorted(paths, key=lambda p: p.name):
        number = int(path.stem) if re.fullmatch(r"[0-9]+", path.stem) else None
        if number is None:
            problems.append(f"{path.name} is not a frame number")
        elif number == 0:
            problems.append(f"{path.name} is frame 0 (numbers start at 1, the speech's first 40 ms)")
        elif number in files:
            problems.append(f"{files[number].name} and {path.name} are both frame {number}")
        else:
            files[number] = path
    if problems:
        more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        raise BadInput("frame_names", f"{key}: frame files are named by their 1-based frame number "
                                      f"(00001.jpg …): {'; '.join(problems[:SHOWN])}{more}")
    return dict(sorted(files.items()))


def _span(first: int, last: int) -> str:
    return f"{first:05d}" if first == last else f"{first:05d}-{last:05d}"
