#!/usr/bin/env bash
# Creates or refreshes the project virtualenv at .venv (idempotent).
#
# Installs the pinned stack from requirements/constraints.txt, Detectron2 (an importable one is kept;
# otherwise the PyPI repackaging `sal-detectron2`, whose wheel is tagged for CPython 3.10 and is
# installed as pure Python, see README), the LVIS API without its opencv-python dependency, and det_ext
# in editable mode. A stamp file records the hash of every input; when nothing changed the script
# returns at once.
#
# Environment:
#   PYTHON             interpreter used to create the venv (default: python3.11, else python3)
#   VENV               venv path (default: .venv in the repository root)
#   DET_EXT_SYSTEM_SITE_PACKAGES=1  create the venv with --system-site-packages, so that an existing
#                      torch / Detectron2 (e.g. a CUDA source build) is reused rather than reinstalled.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${VENV:-$root/.venv}"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp="$venv/.det_ext_setup_stamp"
inputs_hash="$(cat requirements/constraints.txt setup.py dev/setup_venv.sh | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$inputs_hash" && -x "$venv/bin/python" ]]; then
  exit 0
fi

echo "[setup] preparing $venv (first run or changed requirements; this can take a few minutes)"
if [[ ! -x "$venv/bin/python" ]]; then
  venv_flags=()
  [[ "${DET_EXT_SYSTEM_SITE_PACKAGES:-0}" == "1" ]] && venv_flags+=(--system-site-packages)
  "$python_bin" -m venv "${venv_flags[@]}" "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)
constraints=(-c requirements/constraints.txt)

"${pip[@]}" install -q --upgrade pip wheel "setuptools<81" "${constraints[@]}"

# torch/torchvision: keep an importable pair, else install the pinned one.
if ! "$py" -c "import torch, torchvision" >/dev/null 2>&1; then
  "${pip[@]}" install -q "${constraints[@]}" torch torchvision
fi

# Detectron2's runtime dependencies and the rest of the stack.
"${pip[@]}" install -q "${constraints[@]}" \
  numpy fvcore iopath pycocotools "omegaconf<2.4" hydra-core termcolor yacs tabulate cloudpickle \
  tqdm tensorboard matplotlib pillow "setuptools<81" opencv-python-headless transformers \
  open_clip_torch timm scipy pytest
# The LVIS API, without its opencv-python requirement (one OpenCV package: the headless one).
"${pip[@]}" install -q --no-deps "${constraints[@]}" lvis

# Detectron2: keep an importable one; otherwise the PyPI repackaging as pure Python.
if ! "$py" -c "import detectron2" >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "${pip[@]}" install -q --no-deps --only-binary=:all: --python-version 3.10 \
    --target "$tmp/d2" sal-detectron2==0.7.2
  site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  rm -rf "$site/detectron2" "$site"/sal_detectron2-*.dist-info
  # Only the package and its metadata: the wheel's stray top-level `tools` package is left out.
  cp -r "$tmp/d2/detectron2" "$tmp"/d2/sal_detectron2-*.dist-info "$site/"
fi

"${pip[@]}" install -q --no-deps --no-build-isolation -e .
"$py" -c "import detectron2, det_ext, torch, torchvision, pycocotools, cv2" \
  || { echo "[setup] the environment in $venv does not import; see the messages above" >&2; exit 1; }
echo "$inputs_hash" > "$stamp"
echo "[setup] $venv is ready"
