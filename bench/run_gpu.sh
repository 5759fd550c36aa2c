#!/usr/bin/env bash
# Every GPU benchmark in one call of the GPU machine (the limits below add up to 611 s with
# audio2nerf's default 0.6 training minutes, over one 600 s call: run checkpoint in a call of its own;
# A2N_TRAIN_MINUTES adds to it), results to $OUT.
#
#   bash bench/run_gpu.sh                          # all of them
#   bash bench/run_gpu.sh audio2nerf generate      # a subset, in this order
#   bash bench/run_gpu.sh tests                    # the GPU-only tests (pytest -m gpu)
#   bash bench/run_gpu.sh ada                      # ADA against no augmentation (420 s; docs/STYLENERF.md)
#   bash bench/run_gpu.sh nvdiffrast photometric tests   # build nvdiffrast first (carry .gpu/nvdiffrast-src)
#   PRESETS=paper256 bash bench/run_gpu.sh stylenerf-fast   # compiled + CUDA graphs: its own call
#
# The machine has torch but not every package we use: wheels for the missing ones travel in
# .whl/ (see docs/PERFORMANCE.md) and are installed into /tmp/site first. BENCH_GIT_COMMIT names the
# commit measured (the copy sent to the machine has no .git). Each benchmark has its own time
# limit so one slow part cannot eat the others' time.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl $(ls .whl/runtime/*.whl 2>/dev/null) || exit 1
    export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

bench() {   # name, seconds, command...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout --signal=TERM --kill-after=15 "$limit" "$@"
    echo "=== $name: exit $? after $((SECONDS - start))s"
}

run_one() {
    case $1 in
        tests)      bench tests 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_stylenerf_cuda_graphs.py \
                        tests/test_runtime_checkpoint.py tests/test_render_nvdiffrast_gpu.py ;;
        stylenerf)  bench stylenerf 225 python3 bench/stylenerf_bench.py --device cuda --budget 210 --batch auto \
                        --out "$OUT/stylenerf-gpu.json" ;;
        stylenerf-fast)   # training's GPU defaults: compiled blocks, CUDA-graphed regularisers (~2 min compiling per row)
                    bench stylenerf-fast 560 python3 bench/stylenerf_bench.py --device cuda --budget 540 --engines deepspeed \
                        --zero 2 --compile on --graphs on --presets "${PRESETS:-paper256,paper1024}" --batch auto --no-flops \
                        --out "$OUT/stylenerf-fast-gpu.json" ;;
        stylenerf-resume)  # first step of a fresh attempt vs one resumed on the run's compile cache
                    bench stylenerf-resume 420 python3 bench/stylenerf_bench.py --device cuda --budget 400 --engines deepspeed \
                        --zero 2 --compile on --graphs on --presets paper256 --batch 4 --steps 16 --warmup 0 --no-flops \
                        --metric-images 64 --resume-first-step --out "$OUT/stylenerf-resume-gpu.json" ;;
        audio2nerf) bench audio2nerf "$(awk -v m="${A2N_TRAIN_MINUTES:-0.6}" 'BEGIN { print int(90 + 60 * m) }')" \
                        python3 bench/audio2nerf_bench.py --device cuda --train-minutes "${A2N_TRAIN_MINUTES:-0.6}" \
                        ${A2N_PROCESSED:+--processed "$A2N_PROCESSED"} --output "$OUT/audio2nerf-gpu.json" ;;
        ada)        # augment none vs ada in lockstep, LFW faces and jittered clip frames (not in the default set)
                    bench ada 420 python3 bench/ada_bench.py --device cuda --budget 150 --resolution 64 --batch 32 \
                        --eval-every 250 --out "$OUT/ada" ;;
        generate)   bench generate 30 python3 bench/generate_bench.py --device cuda --out "$OUT/generate-gpu.json" ;;
        preprocess) bench preprocess 40 python3 bench/preprocess_bench.py --device cuda --parts fit3dmm,reference \
                        --clips 8 --frames 250 --out "$OUT/preprocess-gpu.json" ;;
        nvdiffrast) bench nvdiffrast 300 bash bench/build_nvdiffrast.sh ;;   # the wheel, when .whl/runtime/ has none
        photometric)   # needs nvdiffrast (.whl/runtime/); BFM09-sized synthetic mesh; PHOTO_CONFIGS compares refinements, PHOTO_LIMIT (s)
                    bench photometric "${PHOTO_LIMIT:-240}" python3 bench/preprocess_bench.py --device cuda --parts photometric \
                        --frames 250 --photometric-clips 2 --photometric-grid 236 --photometric-profile \
                        --photometric-configs "${PHOTO_CONFIGS:-100:100:0.01}" ${PHOTO_LBFGS:+--photometric-lbfgs} \
                        --out "$OUT/preprocess-photometric-gpu.json" ;;
        checkpoint) bench checkpoint 120 python3 bench/checkpoint_bench.py --repeats 1 --output "$OUT/checkpoint-gpu.json" ;;
        launcher)   bench launcher 70 python3 bench/launcher_bench.py --device cuda --repeats 1 --output "$OUT/launcher-gpu.json" ;;
        *) echo "unknown benchmark $1 (nvdiffrast tests stylenerf stylenerf-fast stylenerf-resume ada audio2nerf generate preprocess photometric checkpoint launcher)"; return 2 ;;
    esac
}

for name in "${@:-stylenerf audio2nerf generate preprocess checkpoint launcher}"; do
    for one in $name; do run_one "$one"; done
done
