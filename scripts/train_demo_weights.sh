#!/usr/bin/env bash
# Reproduce pretrained_networks/demo/ (the demo's starting weights, docs/DEMO_WEIGHTS.md):
#
#   scripts/train_demo_weights.sh data        # CPU, where face-alignment is installed: preprocess the
#                                             # bundled clips into build/demo-weights/processed (~1 min)
#   scripts/train_demo_weights.sh train OUT   # one GPU: StyleNeRF for $STYLENERF_SECONDS from scratch on
#                                             # the 100 LFW faces, then audio2nerf for $A2N_SECONDS through
#                                             # it; writes OUT/{stylenerf,audio2nerf}.safetensors, the last
#                                             # sample grids and both metrics.jsonl
#
# Each training stage runs until its time budget, when the launcher's operator stop (SIGINT, as
# a Ctrl-C) makes the ranks commit a stop checkpoint; that checkpoint is what gets exported.
# DEVICE=cpu runs it all on the CPU (a smoke test of the script; the weights need the GPU's minutes).
# WORK (default build/demo-weights) holds the runs, so two tries can share one GPU; STYLENERF_SET
# adds `key=value` overrides to step 2 (e.g. "stages.stylenerf.config.lr_g=0.0005").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=${WORK:-build/demo-weights}
PROCESSED=build/demo-weights/processed
# The launcher finds its tasks through the package's entry points: where the project is on
# PYTHONPATH but not installed (the GPU machine), write them next to the source first.
"$PY" -c 'import importlib.metadata as m, sys; sys.exit(not m.entry_points(group="launcher.tasks"))' 2>/dev/null \
    || "$PY" setup.py -q egg_info

run_for() {   # seconds, run root, spec, overrides...: a local run stopped at its time budget
    local seconds=$1 root=$2; shift 2
    rm -rf "$root"
    timeout --signal=INT --kill-after=90 "$seconds" "$PY" -m launcher submit "$@" --set "run_root=$root" \
        --set "local.device=${DEVICE:-cuda}" || true
}

checkpoints() {   # run root, stage: that stage's checkpoints folder
    echo "$(ls -d "$1"/*/ | head -1)stages/$2/checkpoints"
}

case ${1:-} in
    data)
        rm -rf "$WORK/data-run" "$PROCESSED"
        "$PY" -m launcher submit jobs/demo_weights_data.yaml --set "run_root=$WORK/data-run"
        cp -r "$WORK"/data-run/*/data/processed "$PROCESSED"
        ;;
    train)
        out=${2:?usage: $0 train OUT_DIR}
        mkdir -p "$out"
        extra=()
        for kv in ${STYLENERF_SET:-}; do extra+=(--set "$kv"); done
        run_for "${STYLENERF_SECONDS:-200}" "$WORK/stylenerf" jobs/demo_weights_stylenerf.yaml "${extra[@]}"
        g=$(checkpoints "$WORK/stylenerf" stylenerf)
        "$PY" -m nerffacespeech.pretrained.demo_weights stylenerf "$g" "$out/stylenerf.safetensors"
        run_for "${A2N_SECONDS:-120}" "$WORK/audio2nerf" jobs/demo_weights_audio2nerf.yaml \
            --set "stages.audio2nerf.config.generator=$(realpath "$g")" \
            --set "stages.audio2nerf.config.data=$(realpath "$PROCESSED")"
        "$PY" -m nerffacespeech.pretrained.demo_weights audio2nerf "$(checkpoints "$WORK/audio2nerf" audio2nerf)" \
            "$out/audio2nerf.safetensors"
        for stage in stylenerf audio2nerf; do
            dir=$(ls -d "$WORK/$stage"/*/)stages/$stage
            if [ -f "$dir/metrics.jsonl" ]; then cp "$dir/metrics.jsonl" "$out/$stage-metrics.jsonl"; fi
            for last in $(ls "$dir"/samples/*.png 2>/dev/null | tail -1); do cp "$last" "$out/$stage-$(basename "$last")"; done
        done
        ;;
    *) sed -n 2,12p "$0"; exit 2 ;;
esac
