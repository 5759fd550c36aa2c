#!/usr/bin/env bash
# Install Debian's Slurm 22.05 + munge for the local test cluster.
# Idempotent: a fast no-op when everything is already installed.
# Needs root (or sudo) and access to the Debian apt mirror.
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client munge)
# --with-accounting (or NFS_SLURM_ACCOUNTING=1) also installs slurmdbd +
# mariadb-server for `start.sh --with-accounting`.
if [[ "${NFS_SLURM_ACCOUNTING:-${NFS_SLURM_WITH_ACCOUNTING:-0}}" == 1 || "${1:-}" == "--with-accounting" ]]; then
    PKGS+=(slurmdbd mariadb-server)
fi

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install.sh: already installed: ${PKGS[*]}"
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then SUDO="sudo -n"; else
        echo "install.sh: need root to install: ${missing[*]}" >&2; exit 1
    fi
fi

echo "install.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d: keep the packages' postinst from trying to start services
# (there is no systemd here, and start.sh runs the daemons itself).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [[ $created_policy == 1 ]]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

apt_install() {
    $SUDO apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}
if ! apt_install "${missing[@]}"; then
    echo "install.sh: apt-get install failed; running apt-get update and retrying" >&2
    $SUDO apt-get update -q
    apt_install "${missing[@]}"
fi
echo "install.sh: done"
