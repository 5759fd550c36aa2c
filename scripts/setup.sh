#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian machine: system packages (apt) and a
# virtual environment with the project installed. Idempotent; fast when already done.
#   scripts/setup.sh demo   what the demo needs (a C++ compiler for DeepSpeed's CPU ops)
#   scripts/setup.sh test   plus Slurm + munge with slurmdbd + MariaDB (local test clusters, through
#                           slurm/local-cluster/install.sh --with-accounting), espeak-ng, sox and
#                           chromium (the run report is opened in headless Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
purpose=${1:-demo}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

packages=(g++)
$PYTHON -c 'import ensurepip' 2>/dev/null || packages+=(python3-venv)
if [ "$purpose" = test ]; then
  packages+=(espeak-ng sox chromium)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "[setup] apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$purpose" = test ]; then
  # Its own script: a policy-rc.d keeps the packages from starting services (start.sh runs them).
  bash slurm/local-cluster/install.sh --with-accounting
fi

stamp="$VENV/.installed-$(cat setup.py setup.cfg | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || $PYTHON -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
  # setup.py pins torch==2.13.0 where no torch is installed and keeps an installed one.
  "$VENV/bin/python" -m pip install -q -e '.[all]'
  if "$VENV/bin/python" -m pip list 2>/dev/null | grep -qiE '^nvidia-'; then
    echo "[setup] refusing: CUDA packages were pulled into $VENV" >&2; exit 1
  fi
  rm -f "$VENV"/.installed-*; touch "$stamp"
fi
# DeepSpeed JIT-builds its CPU shared-memory comm op the first time a process group starts (about a
# minute on 2 cores, every rank waiting on one build): build it now, not inside a job or a test.
"$VENV/bin/python" -c 'from deepspeed.comm.torch import build_shm_op; build_shm_op()' 2>&1 | grep -v WARNING || true
echo "[setup] ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
