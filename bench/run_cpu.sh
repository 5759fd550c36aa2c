#!/usr/bin/env bash
# Every CPU benchmark on this machine (about 14 minutes on 2 cores), results to bench/results/.
#
#   bash bench/run_cpu.sh                          # all of them
#   bash bench/run_cpu.sh launcher checkpoint      # a subset
#
# Needs the project installed (scripts/setup.sh test). Timings on a shared machine are noisy:
# every JSON records the load average beside its numbers.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1

run_one() {
    echo "=== $1"
    case $1 in
        launcher)   $PY bench/launcher_bench.py --device cpu ;;
        checkpoint) $PY bench/checkpoint_bench.py --width 2048 --depth 4 ;;
        preprocess) $PY bench/preprocess_bench.py --device cpu --out bench/results/preprocess-cpu.json ;;
        stylenerf)  $PY bench/stylenerf_bench.py --presets tiny --engines deepspeed --zero 2 --precisions fp32 \
                        --steps 16 --warmup 4 --device cpu --out bench/results/stylenerf-cpu.json ;;
        audio2nerf) $PY bench/audio2nerf_bench.py --device cpu --preset tiny --batch 4 --steps 5 --warmup 1 \
                        --output bench/results/audio2nerf-cpu.json ;;
        generate)   $PY bench/generate_bench.py --presets tiny --frames 16 --device cpu \
                        --out bench/results/generate-cpu.json ;;
        restart)    $PY bench/restart_bench.py --repeats 3 ;;      # needs the local Slurm cluster running
        *) echo "unknown benchmark $1"; return 2 ;;
    esac
}

for name in "${@:-launcher checkpoint preprocess stylenerf audio2nerf generate restart}"; do
    for one in $name; do run_one "$one"; done
done
