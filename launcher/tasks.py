"""Find tasks and their validation checks by name, without importing the workload.

Tasks are declared as entry points (group `launcher.tasks`) or written as `module:function`.
"""
from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points

TASK_GROUP = "launcher.tasks"
CHECK_GROUP = "launcher.task_checks"
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def registered() -> dict[str, str]:
    """Registered task names → `module:function`, read from package metadata only."""
    return {ep.name: ep.value for ep in entry_points(group=TASK_GROUP)}


def is_target(text: str) -> bool:
    """Whether `text` is a `module:function` reference."""
    return bool(_TARGET.match(text))


def resolve_target(task: str) -> str:
    """The `module:function` a task name or reference stands for (KeyError if unknown)."""
    return task if is_target(task) else registered()[task]


def load_callable(target: str):
    """Import `module:function` and return the function (done inside job processes only)."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def check_for(task: str):
    """The torch-free config check registered for `task`, or None."""
    for ep in entry_points(group=CHECK_GROUP):
        if ep.name == task:
            return ep
    return None
