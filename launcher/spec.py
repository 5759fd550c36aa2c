"""YAML job spec → typed, validated `JobSpec`. Every refusal names `file:line: field`.

Validation happens once, here; the plan and the backends trust the objects it returns.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import signals, tasks
from .fields import Problem, Reader, SpecInvalid, dotted, suggest
from .yamlsrc import Where, YamlSyntaxError, load_file

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_HELP = "use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)"
# Values that go into #SBATCH lines: Slurm names, lists and features, never shell syntax.
SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,:@+=&|\[\]*-]{1,200}$")
SLURM_WORD_HELP = "Slurm names may use letters, digits and _.,:@+=&|[]*- only"
SBATCH_OPTION = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:@+=%/\[\]*-]{1,200})?$")
SBATCH_OPTION_HELP = "write '--option' or '--option=value' with a plain value (no spaces or quotes)"
# The run directory appears double-quoted in #SBATCH lines, where these cannot be escaped.
RUN_ROOT = re.compile(r'^[^"%\\\n\r\x00]{1,1000}$')
RUN_ROOT_HELP = 'a path without double quotes, percent signs, backslashes or newlines'
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SIGNALS = signals.WARNING_SIGNALS
BACKENDS = ("local", "slurm")
DEVICES = ("cpu", "cuda", "auto")
MAX_SHARDS = 100_000
DICT_SOURCE = "<dict spec>"          # where problems of a spec given as a Python mapping point
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_minutes(value: Any) -> int:
    """Slurm time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) → whole minutes."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be minutes or a Slurm time like '2:00:00', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"must be positive, got {value}")
        return value
    m = _TIME.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a Slurm time (e.g. '90', '2:00:00', '1-12:00:00')")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:                      # D-HH[:MM[:SS]]
        h, mnt, s = (nums + [0, 0])[:3]
        seconds = ((int(days) * 24 + h) * 60 + mnt) * 60 + s
    elif len(nums) == 1:                      # minutes
        seconds = nums[0] * 60
    elif len(nums) == 2:                      # MM:SS
        seconds = nums[0] * 60 + nums[1]
    else:                                     # HH:MM:SS
        seconds = (nums[0] * 60 + nums[1]) * 60 + nums[2]
    if seconds <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return -(-seconds // 60)


def format_minutes(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    return f"{days}-{rest // 60:02d}:{rest % 60:02d}:00"


@dataclass(frozen=True)
class PartitionLimits:
    gpus_per_node: int | None = None
    cpus_per_node: int | None = None
    mem_gb_per_node: float | None = None


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    time_minutes: int = 60
    signal: str = "USR2"
    signal_seconds: int = 120
    max_restarts: int = 3
    restart_in_allocation: bool = True   # retry a failure inside the job's allocation before requeueing
    array_parallelism: int | None = None
    extra_sbatch: tuple[str, ...] = ()
    partitions: dict[str, PartitionLimits] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalSettings:
    nproc_per_node: int | None = None   # replaces tasks_per_node of multi-process stages
    device: str = "cpu"
    max_parallel: int = 0               # parallel array shards; 0 = number of CPUs
    max_restarts: int = 3


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1             # processes per node (torchrun --nproc_per_node)
    cpus_per_task: int = 1
    mem_gb: float | None = None
    time_minutes: int | None = None


@dataclass(frozen=True)
class StageSpec:
    name: str
    task: str
    config: dict[str, Any]
    resources: Resources
    array: int = 0                      # number of shards; 0 = not an array
    array_parallelism: int | None = None
    after: tuple[str, ...] = ()
    checkpoint: dict[str, Any] = field(default_factory=dict)
    partition: str | None = None        # overrides slurm.partition for this stage
    max_restarts: int | None = None
    hang_timeouts: dict[str, float] = field(default_factory=dict)   # given fields of HangTimeouts


@dataclass(frozen=True)
class JobSpec:
    name: str
    backend: str
    run_root: str
    slurm: SlurmSettings
    local: LocalSettings
    env: dict[str, str]
    stages: dict[str, StageSpec]
    source: str
    raw: dict[str, Any]                 # the merged YAML, frozen into the run directory

    def stage_order(self) -> list[str]:
        """Stages in dependency order (validation guarantees there is no cycle)."""
        order, done = [], set()

        def visit(name):
            if name in done:
                return
            for dep in self.stages[name].after:
                visit(dep)
            done.add(name)
            order.append(name)

        for name in self.stages:
            visit(name)
        return order


# -- loading: include, merge, overrides ------------------------------------------------------
def load_merged(spec: str | Path | dict, overrides: list[str] = (),
                base_dir: str | Path = ".") -> tuple[dict, dict[tuple, Where]]:
    """Read a spec (a file, or a mapping whose `include:` names files under `base_dir`) with
    its `include:` chain and `--set` overrides applied, keeping positions."""
    if isinstance(spec, dict):
        data, positions = _from_mapping(spec, Path(base_dir))
    else:
        data, positions = _load_with_includes(Path(spec), ())
    for index, text in enumerate(overrides, start=1):
        key, sep, value = text.partition("=")
        where = Where(f"--set[{index}]")
        if not sep or not key.strip():
            raise SpecInvalid([Problem(where, text, "write --set key.path=value")])
        keys = tuple(key.strip().split("."))
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = parsed
        for p in list(positions):
            if p[:len(keys)] == keys:
                del positions[p]
        positions[keys] = where
    return data, positions


def _load_with_includes(path: Path, chain: tuple) -> tuple[dict, dict[tuple, Where]]:
    resolved = path.resolve()
    if resolved in chain:
        raise SpecInvalid([Problem(Where(str(path)), "include",
                                   "include cycle: " + " -> ".join(str(p) for p in chain + (resolved,)))])
    if not path.is_file():
        raise SpecInvalid([Problem(Where(str(path)), "<spec>", "file not found")])
    try:
        data, positions = load_file(path)
    except YamlSyntaxError as exc:
        raise SpecInvalid([Problem(exc.where, "<yaml>", exc.message)]) from None
    if not isinstance(data, dict):
        raise SpecInvalid([Problem(Where(str(path), 1), "<spec>", "a spec must be a mapping")])
    return _merge_includes(data, positions, Where(str(path)), path.parent, chain + (resolved,))


def _from_mapping(spec: dict, base_dir: Path) -> tuple[dict, dict[tuple, Where]]:
    """A spec given as a Python mapping: a copy of plain YAML values (what the run directory
    freezes as spec.yaml), without line positions; problems name DICT_SOURCE and the field."""
    where = Where(DICT_SOURCE)
    try:
        data = yaml.safe_load(yaml.safe_dump(spec, sort_keys=False))
    except yaml.YAMLError as exc:
        raise SpecInvalid([Problem(where, "<spec>", f"holds a value that is not plain YAML "
                                                    f"(str, int, float, bool, None, list, dict): {exc}")]) from None
    return _merge_includes(data, {}, where, base_dir, ())


def _merge_includes(data: dict, positions: dict[tuple, Where], source: Where, folder: Path,
                    chain: tuple) -> tuple[dict, dict[tuple, Where]]:
    """`data` (read from `source`) merged over the files its `include:` names, relative to `folder`."""
    includes = data.pop("include", None)
    if includes is None:
        return data, positions
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SpecInvalid([Problem(positions.get(("include",), source), "include",
                                   "must be a file name or a list of file names")])
    merged, merged_pos = {}, {}
    for index, inc in enumerate(includes):
        where = positions.get(("include", index)) or positions.get(("include",), source)
        if not (folder / inc).is_file():
            raise SpecInvalid([Problem(where, "include", f"file not found: {folder / inc}")])
        base, base_pos = _load_included(folder / inc, chain, where)
        _deep_merge(merged, base)
        merged_pos.update(base_pos)
    _deep_merge(merged, data)
    merged_pos.update({p: w for p, w in positions.items() if p[:1] != ("include",)})
    return merged, merged_pos


def _load_included(path: Path, chain: tuple, including: Where) -> tuple[dict, dict[tuple, Where]]:
    """An included file's data and positions; every place in it, and every problem found in
    it, also names the `include:` entry at `including`, so that a user sees how it came in."""
    try:
        data, positions = _load_with_includes(path, chain)
    except SpecInvalid as invalid:
        raise SpecInvalid([p.via(including) for p in invalid.problems]) from None
    return data, {p: w.via(including) for p, w in positions.items()}


def _deep_merge(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


# -- validation ------------------------------------------------------------------------------
INCLUDE_ONLY = ("has neither name nor stages: an include-only base (settings shared by job specs), "
                "not a job; validate a spec that names it in `include:` (e.g. jobs/pipeline.yaml)")


def load_spec(path: str | Path | dict, overrides: list[str] = (), backend: str | None = None,
              check_tasks: bool = True, base_dir: str | Path = ".",
              checkpoint_dirs: Mapping[str, Path] | None = None) -> JobSpec:
    """Load, merge and validate a spec (a file, or a mapping whose relative paths are under
    `base_dir`); raise SpecInvalid listing every problem. `checkpoint_dirs` (stage → folder, for
    a resume on new resources) lets the task checks judge what the stages' checkpoints hold."""
    data, positions = load_merged(path, overrides, base_dir)
    if backend is not None:
        data["backend"] = backend
        positions[("backend",)] = Where("--backend")
    problems: list[Problem] = []
    source = DICT_SOURCE if isinstance(path, dict) else str(path)
    spec_dir = Path(base_dir) if isinstance(path, dict) else Path(path).parent
    if isinstance(data, dict) and "name" not in data and "stages" not in data:
        raise SpecInvalid([Problem(Where(source, 1), dotted(()), INCLUDE_ONLY)])
    top = Reader(data, (), positions, problems, Where(source))
    name = top.string("name", pattern=NAME, pattern_help=NAME_HELP)
    backend_name = top.choice("backend", BACKENDS, "local")
    run_root = top.string("run_root", "runs", pattern=RUN_ROOT, pattern_help=RUN_ROOT_HELP)
    env = _read_env(top.mapping("env"))
    slurm = _read_slurm(top.mapping("slurm"))
    local = _read_local(top.mapping("local"))
    stages, unsound = _read_stages(top, slurm)
    top.finish()
    _check_graph(top, stages)
    # The cross-checks judge only what was read without problems: a wrong setting read as its
    # default would have them report on a stand-in instead of the user's value.
    if not _flawed(problems, "backend", "local", "slurm.partition", "slurm.partitions"):
        sound = {sname: s for sname, s in stages.items() if sname not in unsound}
        _check_resources(top, backend_name, slurm, local, sound)
        if check_tasks:
            _check_tasks(top, backend_name, local, sound, spec_dir, checkpoint_dirs or {})
    if problems:
        raise SpecInvalid(problems)
    return JobSpec(name=name, backend=backend_name, run_root=run_root, slurm=slurm, local=local,
                   env=env, stages=stages, source=source, raw=data)


def _read_env(r: Reader) -> dict[str, str]:
    env = {}
    for key, value in r.data.items():
        r.seen.add(key)
        if not isinstance(key, str) or not ENV_KEY.match(key):
            r.report(r.path + (key,), "environment names use letters, digits and '_'")
        elif isinstance(value, (dict, list)) or value is None:
            r.report(r.path + (key,), "must be a string or number")
        elif "\n" in str(value) or "\0" in str(value):
            r.report(r.path + (key,), "must not contain a newline or NUL")
        else:
            env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _read_slurm(r: Reader) -> SlurmSettings:
    word = dict(pattern=SLURM_WORD, pattern_help=SLURM_WORD_HELP)
    partitions = {}
    pr = r.mapping("partitions")
    for pname in pr.data:
        pr.seen.add(pname)
        lim = pr.mapping(pname)
        partitions[str(pname)] = PartitionLimits(
            gpus_per_node=lim.integer("gpus_per_node", None, minimum=0),
            cpus_per_node=lim.integer("cpus_per_node", None, minimum=1),
            mem_gb_per_node=lim.number("mem_gb_per_node", None, minimum=0))
        lim.finish()
    settings = SlurmSettings(
        partition=r.string("partition", None, **word),
        account=r.string("account", None, **word),
        qos=r.string("qos", None, **word),
        constraint=r.string("constraint", None, **word),
        exclusive=r.boolean("exclusive", False),
        time_minutes=r.parsed("time", parse_minutes, 60),
        signal=r.choice("signal", SIGNALS, signals.DEFAULT_WARNING),
        signal_seconds=r.integer("signal_seconds", 120, minimum=10, maximum=65535),
        max_restarts=r.integer("max_restarts", 3, minimum=0, maximum=100),
        restart_in_allocation=r.boolean("restart_in_allocation", True),
        array_parallelism=r.integer("array_parallelism", None, minimum=1),
        extra_sbatch=tuple(r.string_list("extra_sbatch", SBATCH_OPTION, SBATCH_OPTION_HELP)),
        partitions=partitions)
    r.finish()
    return settings


def _read_local(r: Reader) -> LocalSettings:
    settings = LocalSettings(
        nproc_per_node=r.integer("nproc_per_node", None, minimum=1, maximum=1024),
        device=r.choice("device", DEVICES, "cpu"),
        max_parallel=r.integer("max_parallel", 0, minimum=0),
        max_restarts=r.integer("max_restarts", 3, minimum=0, maximum=100))
    r.finish()
    return settings


def _read_stages(top: Reader, slurm: SlurmSettings) -> tuple[dict[str, StageSpec], set[str]]:
    """The stages, and the names of those whose resources, partition or config had problems."""
    sr = top.mapping("stages")
    if not sr.data:
        sr.report(sr.path, "a spec needs at least one stage")
    stages, unsound = {}, set()
    for sname in sr.data:
        sr.seen.add(sname)
        first = len(top.problems)
        if not isinstance(sname, str) or not NAME.match(sname):
            sr.report(sr.path + (sname,), f"stage name {sname!r} is not allowed: {NAME_HELP}")
            continue
        r = sr.mapping(sname)
        task = r.string("task")
        if isinstance(task, str) and not tasks.is_target(task) and task not in _registered():
            r.report(r.path + ("task",), f"unknown task {task!r}"
                     f"{suggest(task, _registered())}; use a registered name or module:function")
        config = r.raw("config", {})
        if not isinstance(config, dict):
            r.report(r.path + ("config",), "must be a mapping")
            config = {}
        res = r.mapping("resources")
        gpus = res.integer("gpus_per_node", 0, minimum=0, maximum=64)
        resources = Resources(
            nodes=res.integer("nodes", 1, minimum=1, maximum=4096),
            gpus_per_node=gpus,
            tasks_per_node=res.integer("tasks_per_node", gpus if gpus else 1, minimum=1, maximum=256),
            cpus_per_task=res.integer("cpus_per_task", 1, minimum=1, maximum=1024),
            mem_gb=res.number("mem_gb", None, minimum=0.1),
            time_minutes=res.parsed("time", parse_minutes, None))
        res.finish()
        array_size, array_par = _read_array(r)
        ck = r.mapping("checkpoint")
        checkpoint = {k: v for k, v in {
            "every_steps": ck.integer("every_steps", None, minimum=0),
            "every_minutes": ck.number("every_minutes", None, minimum=0),
            "keep_last": ck.integer("keep_last", None, minimum=1),
            "keep_every": ck.integer("keep_every", None, minimum=0),
            "async_save": ck.boolean("async_save", None)}.items() if v is not None}
        ck.finish()
        stages[sname] = StageSpec(
            name=sname, task=task or "", config=config, resources=resources,
            array=array_size, array_parallelism=array_par,
            after=tuple(r.string_list("after")),
            checkpoint=checkpoint,
            partition=r.string("partition", None, pattern=SLURM_WORD, pattern_help=SLURM_WORD_HELP),
            max_restarts=r.integer("max_restarts", None, minimum=0, maximum=100),
            hang_timeouts=_read_hang_timeouts(r))
        if r.raw("stop_signals", None) is not None:
            r.report(r.path + ("stop_signals",), "not a stage setting: every stage stops on "
                     "slurm.signal (the one warning signal), SIGTERM and SIGINT")
        r.finish()
        if _flawed(top.problems[first:], *(dotted(r.path + (part,)) for part in ("resources", "partition",
                                                                                 "config"))):
            unsound.add(sname)
    return stages, unsound


def _read_hang_timeouts(r: Reader) -> dict[str, float]:
    """hang_timeout (seconds without a step), hang_timeout_start (from launch to the loop, then
    until the first step ends), hang_timeout_save (during a checkpoint save) and
    hang_timeout_evaluate (during a task's evaluation), and collective_timeout (how long a
    collective waits for its peers): those given, as launcher.heartbeat.HangTimeouts fields. At
    least 5 s: a rank's heartbeat is rewritten only every 2 s."""
    given = {"step": r.number("hang_timeout", None, minimum=5),
             "start": r.number("hang_timeout_start", None, minimum=5),
             "save": r.number("hang_timeout_save", None, minimum=5),
             "evaluate": r.number("hang_timeout_evaluate", None, minimum=5),
             "collective": r.number("collective_timeout", None, minimum=10)}
    return {k: float(v) for k, v in given.items() if v is not None}


def _flawed(problems: list[Problem], *fields: str) -> bool:
    """Whether a problem was reported at or under any of the dotted `fields`."""
    return any(p.field == f or p.field.startswith(f + ".") for p in problems for f in fields)


def _read_array(r: Reader) -> tuple[int, int | None]:
    value = r.raw("array", 0)
    if isinstance(value, dict):
        ar = r.mapping("array")
        size = ar.integer("size", minimum=1, maximum=MAX_SHARDS)
        par = ar.integer("parallelism", None, minimum=1)
        ar.finish()
        return size or 0, par
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        r.report(r.path + ("array",), "must be a number of shards or {size, parallelism}")
        return 0, None
    if value > MAX_SHARDS:
        r.report(r.path + ("array",), f"must be at most {MAX_SHARDS}, got {value}")
        return 0, None
    return value, None


def _check_graph(top: Reader, stages: dict[str, StageSpec]) -> None:
    for s in stages.values():
        for i, dep in enumerate(s.after):
            if dep not in stages:
                top.report(("stages", s.name, "after", i),
                           f"no stage named {dep!r}{suggest(dep, stages)}")
            elif dep == s.name:
                top.report(("stages", s.name, "after", i), "a stage cannot wait for itself")
    state: dict[str, int] = {}

    def visit(name, trail):
        if state.get(name) == 2 or name not in stages:
            return
        if state.get(name) == 1:
            top.report(("stages", name, "after"), "dependency cycle: " + " -> ".join(trail + [name]))
            return
        state[name] = 1
        for dep in stages[name].after:
            visit(dep, trail + [name])
        state[name] = 2

    for name in stages:
        visit(name, [])


def _check_resources(top: Reader, backend: str, slurm: SlurmSettings, local: LocalSettings,
                     stages: dict[str, StageSpec]) -> None:
    for s in stages.values():
        path = ("stages", s.name, "resources")
        res = s.resources
        if res.gpus_per_node and res.tasks_per_node != res.gpus_per_node:
            top.report(path + ("tasks_per_node",), f"{res.tasks_per_node} processes per node but "
                       f"{res.gpus_per_node} GPUs per node: use one process per GPU")
        if backend == "local":
            if res.nodes > 1:
                top.report(path + ("nodes",), f"the local backend runs on one node, the stage asks "
                           f"for {res.nodes}; use backend: slurm or --set stages.{s.name}.resources.nodes=1")
            if local.device == "cuda" and s.array == 0 and res.gpus_per_node == 0 and res.tasks_per_node > 1:
                top.report(path + ("gpus_per_node",), "local.device is cuda but the stage asks for no GPUs")
            continue
        partition = s.partition or slurm.partition
        limits = slurm.partitions.get(partition or "")
        if partition and slurm.partitions and limits is None:
            top.report(("stages", s.name, "partition") if s.partition else ("slurm", "partition"),
                       f"partition {partition!r} is not in slurm.partitions"
                       f"{suggest(partition, slurm.partitions)}")
        if limits is None:
            continue
        if limits.gpus_per_node is not None and res.gpus_per_node > limits.gpus_per_node:
            top.report(path + ("gpus_per_node",), f"{res.gpus_per_node} GPUs per node, but partition "
                       f"{partition!r} has {limits.gpus_per_node} per node")
        cpus = res.cpus_per_task * res.tasks_per_node
        if limits.cpus_per_node is not None and cpus > limits.cpus_per_node:
            top.report(path + ("cpus_per_task",), f"{res.tasks_per_node} tasks x {res.cpus_per_task} "
                       f"CPUs = {cpus} per node, but partition {partition!r} has {limits.cpus_per_node}")
        if limits.mem_gb_per_node is not None and res.mem_gb and res.mem_gb > limits.mem_gb_per_node:
            top.report(path + ("mem_gb",), f"{res.mem_gb} GB per node, but partition {partition!r} "
                       f"has {limits.mem_gb_per_node}")


def processes_per_node(stage: StageSpec, backend: str, local: LocalSettings) -> int:
    """How many processes a stage runs on each node under `backend`."""
    if backend == "local" and local.nproc_per_node and stage.resources.tasks_per_node > 1:
        return local.nproc_per_node
    return stage.resources.tasks_per_node


def _check_tasks(top: Reader, backend: str, local: LocalSettings, stages: dict[str, StageSpec],
                 spec_dir: Path, checkpoint_dirs: Mapping[str, Path]) -> None:
    for s in stages.values():
        ep = tasks.check_for(s.task)
        if ep is None:
            continue
        nproc = processes_per_node(s, backend, local)
        nodes = 1 if backend == "local" else s.resources.nodes
        resources = {"nodes": nodes, "processes_per_node": nproc, "world_size": nodes * nproc,
                     "gpus_per_node": s.resources.gpus_per_node, "backend": backend,
                     "device": local.device if backend == "local" else
                     ("cuda" if s.resources.gpus_per_node else "cpu"),
                     "array": s.array, "spec_dir": str(spec_dir)}
        if s.name in checkpoint_dirs:
            resources["checkpoint_dir"] = str(checkpoint_dirs[s.name])
        try:
            findings = ep.load()(s.config, resources)
        except Exception as exc:  # a broken check must not hide the spec's own problems
            findings = [("", f"the task's check failed: {type(exc).__name__}: {exc}")]
        for field_path, message in findings:
            path = ("stages", s.name, "config") + tuple(p for p in str(field_path).split(".") if p)
            top.report(path, message)


def _registered() -> dict[str, str]:
    return tasks.registered()


__all__ = ["JobSpec", "StageSpec", "Resources", "SlurmSettings", "LocalSettings", "SpecInvalid",
           "Problem", "load_spec", "parse_minutes", "format_minutes", "processes_per_node", "dotted"]
