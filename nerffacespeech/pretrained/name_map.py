"""Map an official state dict onto one of our models: a rule table, shape checks, a full report.

A rule is a regular expression over the official name (matched whole) and the target name it
becomes (a `re` template), or None to drop the tensor on purpose, and optionally a transform of
the tensor (a layout change: a 1x1 kernel squeezed, input channels reordered) applied before the
shape check. The first matching rule wins.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from launcher import atomic


@dataclass(frozen=True)
class Rule:
    pattern: str
    target: str | None      # None: dropped on purpose (e.g. not part of our model)
    why: str = ""
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None   # official layout -> ours


IDENTITY = (Rule(r"(.+)", r"\1", "our names are the official names"),)


class MappingError(ValueError):
    """The official weights do not cover our model, or shapes disagree."""


@dataclass
class MappingReport:
    mapped: dict[str, torch.Tensor] = field(default_factory=dict)   # target name -> tensor
    source_of: dict[str, str] = field(default_factory=dict)         # target name -> official name
    dropped: list[str] = field(default_factory=list)                # official names a rule dropped
    unmapped: list[str] = field(default_factory=list)               # official names no rule matched
    unknown_target: list[tuple[str, str]] = field(default_factory=list)  # (official, target not in model)
    shape_mismatches: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)                # model names nothing filled

    @property
    def complete(self) -> bool:
        return not (self.unmapped or self.unknown_target or self.shape_mismatches or self.missing)

    def summary(self) -> str:
        lines = [f"mapped {len(self.mapped)}, dropped {len(self.dropped)}, unmapped {len(self.unmapped)}, "
                 f"shape mismatches {len(self.shape_mismatches)}, missing {len(self.missing)}"]
        lines += [f"  unmapped official: {name}" for name in self.unmapped]
        lines += [f"  no such model tensor: {src} -> {dst}" for src, dst in self.unknown_target]
        lines += [f"  shape: {src} {tuple(a)} -> {dst} {tuple(b)}" for src, dst, a, b in self.shape_mismatches]
        lines += [f"  missing in the official weights: {name}" for name in self.missing]
        return "\n".join(lines)

    def require_complete(self, allow_missing: Sequence[str] = ()) -> None:
        """Raise MappingError unless everything mapped (patterns in `allow_missing` may stay unfilled)."""
        missing = [n for n in self.missing if not any(re.fullmatch(p, n) for p in allow_missing)]
        if self.unmapped or self.unknown_target or self.shape_mismatches or missing:
            raise MappingError(self.summary())


def map_state_dict(official: Mapping[str, torch.Tensor], target_shapes: Mapping[str, Sequence[int]],
                   rules: Sequence[Rule]) -> MappingReport:
    """Rename `official` by `rules` and keep what fits `target_shapes` (name -> shape of our model)."""
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    report = MappingReport()
    for name, tensor in official.items():
        match = next(((rx, rule) for rx, rule in compiled if rx.fullmatch(name)), None)
        if match is None:
            report.unmapped.append(name)
            continue
        rx, rule = match
        if rule.target is None:
            report.dropped.append(name)
            continue
        target = rx.fullmatch(name).expand(rule.target)
        if rule.transform is not None:
            tensor = rule.transform(tensor)
        if target in report.source_of:
            raise MappingError(f"rules map both {report.source_of[target]} and {name} onto {target}")
        if target not in target_shapes:
            report.unknown_target.append((name, target))
        elif tuple(tensor.shape) != tuple(target_shapes[target]):
            report.shape_mismatches.append((name, target, tuple(tensor.shape), tuple(target_shapes[target])))
        else:
            report.mapped[target] = tensor
            report.source_of[target] = name
    report.missing = [name for name in target_shapes if name not in report.mapped]
    return report


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` as safetensors, atomically (the only weight format this project writes)."""
    from safetensors.torch import save

    contiguous = {name: t.detach().contiguous() for name, t in tensors.items()}
    atomic.write_bytes(path, save(contiguous, metadata=dict(metadata or {})))
