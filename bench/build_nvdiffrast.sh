#!/usr/bin/env bash
# Build nvdiffrast's wheel on the GPU machine (it compiles its CUDA extension at install time)
# and install it into /tmp/site, where bench/run_gpu.sh puts the project's other wheels.
#
#   bash bench/build_nvdiffrast.sh [SOURCE]   # default SOURCE: .gpu/nvdiffrast-src (a `git archive`
#                                             # of NVlabs/nvdiffrast; carry it with the call)
#
# The wheel lands in $OUT; store it in .whl/runtime/ so later calls install it instead
# (docs/PREPROCESSING.md, "nvdiffrast"). TORCH_CUDA_ARCH_LIST defaults to 9.0 (H100, H200).
set -eu
SRC=$(cd "${1:-.gpu/nvdiffrast-src}" && pwd)
OUT=${OUT:-bench/results}
mkdir -p "$OUT" /tmp/nvdiffrast-wheel
start=$SECONDS
( cd "$SRC" && TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    python3 -m pip wheel -q --no-build-isolation --no-deps --no-index -w /tmp/nvdiffrast-wheel . )
echo "nvdiffrast wheel built in $((SECONDS - start)) s"
cp /tmp/nvdiffrast-wheel/nvdiffrast-*.whl "$OUT/"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    /tmp/nvdiffrast-wheel/nvdiffrast-*.whl
