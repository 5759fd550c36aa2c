"""The `stylenerf.train` config: what validation accepts and refuses, before anything runs."""
import subprocess
import sys
from pathlib import Path

import yaml

from nerffacespeech.configs.stylenerf import PRESETS, TrainConfig, check

ROOT = Path(__file__).resolve().parents[1]
FACES = str(ROOT / "data" / "sample" / "faces" / "lfw")     # check() refuses a data path that does not exist
CPU_2 = {"world_size": 2, "device": "cpu"}
GPU_8 = {"world_size": 8, "device": "cuda"}


def fields_of(problems):
    return [field for field, _ in problems]


def test_the_tiny_preset_validates_for_two_cpu_processes():
    assert check({"data": "data/sample/faces/lfw", "preset": "tiny", "zero_stage": 2, "precision": "bf16"},
                 CPU_2) == []


def test_the_shipped_eight_gpu_spec_validates():
    """Apart from FID's Inception weights where they are not downloaded (tests/test_pretrained_checks.py)."""
    config = yaml.safe_load((ROOT / "jobs" / "stylenerf_8gpu.yaml").read_text())["stages"]["train"]["config"]
    config["data"] = FACES                              # the spec's data/processed is on the cluster
    assert [(f, m) for f, m in check(config, GPU_8) if "pt_inception-2015-12-05-6726825d.pth" not in m] == []


def test_every_deepspeed_zero_stage_is_accepted_in_bf16_and_fp32():
    for stage in (0, 1, 2, 3):
        for precision in ("bf16", "fp32", "auto"):
            assert check({"data": FACES, "zero_stage": stage, "precision": precision}, CPU_2) == []


def test_fp16_is_refused_on_cpu_with_the_reason_and_accepted_on_gpus():
    problems = check({"data": FACES, "engine": "deepspeed", "precision": "fp16"}, CPU_2)
    assert fields_of(problems) == ["precision"]
    assert "CPU" in problems[0][1] and "bf16" in problems[0][1]
    assert check({"data": FACES, "engine": "deepspeed", "precision": "fp16", "preset": "paper256"}, GPU_8) == []


def test_compile_defaults_to_auto_which_compiles_on_gpus_only():
    config = TrainConfig(data="d")
    assert config.compile == "auto" and config.compiles("cuda") and not config.compiles("cpu")
    assert TrainConfig(data="d", compile=True).compiles("cpu") and not TrainConfig(data="d", compile=False).compiles("cuda")


def test_cuda_graphs_default_to_gpus_up_to_512_px_where_their_memory_pool_is_small():
    assert TrainConfig(data="d", preset="paper256").captures_graphs("cuda")
    assert TrainConfig(data="d", preset="paper512").captures_graphs("cuda")
    assert not TrainConfig(data="d", preset="paper1024").captures_graphs("cuda")
    assert not TrainConfig(data="d", preset="paper256").captures_graphs("cpu")


def test_cuda_graphs_true_or_false_decide_on_gpus_at_any_size():
    assert TrainConfig(data="d", preset="paper1024", cuda_graphs=True).captures_graphs("cuda")
    assert not TrainConfig(data="d", preset="paper256", cuda_graphs=False).captures_graphs("cuda")
    assert not TrainConfig(data="d", cuda_graphs=True).captures_graphs("cpu")


def test_cuda_graphs_accepts_booleans_and_auto_only():
    assert check({"data": FACES, "cuda_graphs": "auto"}, CPU_2) == []
    problems = check({"data": FACES, "cuda_graphs": "on"}, CPU_2)
    assert problems == [("cuda_graphs", "must be true, false or auto, got 'on'")]


def test_compile_accepts_booleans_and_auto_only():
    assert check({"data": FACES, "compile": True}, CPU_2) == [] and check({"data": FACES, "compile": "auto"}, CPU_2) == []
    problems = check({"data": FACES, "compile": "yes"}, CPU_2)
    assert problems == [("compile", "must be true, false or auto, got 'yes'")]


def test_ddp_has_no_zero_stages():
    problems = check({"data": FACES, "engine": "ddp", "zero_stage": 2}, CPU_2)
    assert fields_of(problems) == ["zero_stage"] and "ddp" in problems[0][1]
    assert check({"data": FACES, "engine": "ddp", "zero_stage": 0}, CPU_2) == []


def test_unknown_keys_wrong_types_and_model_overrides_are_reported_by_field():
    problems = check({"data": FACES, "zero_stag": 2, "lr_g": "fast", "model": {"fg_hidden": "wide", "depth": 3}},
                     CPU_2)
    assert set(fields_of(problems)) == {"zero_stag", "lr_g", "model.fg_hidden", "model.depth"}


def test_the_total_batch_must_split_into_whole_micro_batches_per_process():
    problems = check({"data": FACES, "preset": "paper256", "batch_total": 36}, GPU_8)
    assert fields_of(problems) == ["batch_total"]
    assert check({"data": FACES, "preset": "paper256", "batch_total": 64}, GPU_8) == []   # 2 micro-batches


def test_data_is_required():
    assert fields_of(check({"preset": "tiny"}, CPU_2)) == ["data"]


def test_presets_differ_only_in_numbers():
    cfg, problems = TrainConfig.parse({"data": "d", "preset": "paper1024", "model": {"resolution": 512}})
    assert problems == [] and cfg.model_config == PRESETS["paper512"].model
    assert PRESETS["paper1024"].r1_gamma == 2.0 and PRESETS["paper256"].r1_gamma == 0.5


def test_checking_a_config_imports_no_torch():
    code = ("import sys; from nerffacespeech.configs.stylenerf import check; "
            "check({'data': '.', 'preset': 'paper1024'}, {'world_size': 8, 'device': 'cuda'}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
