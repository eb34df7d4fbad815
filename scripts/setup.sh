#!/usr/bin/env bash
# Set up the workbench: a virtual environment in .venv with torch 2.13.0 installed first and every
# later pip call guarded by constraints.txt (an unpinned torch pulls several GB of CUDA packages),
# plus the Debian packages of the stamps asset library where apt is available.
# Idempotent: a finished set-up is remembered in .venv/.setup-done (keyed on pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.setup-done
key=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)

if [[ ! -f $stamp || $(cat "$stamp") != "$key" ]]; then
  echo "== setting up .venv (torch 2.13.0 CPU first, then the workbench)"
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  # TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu): where pip would otherwise take
  # PyPI's CUDA build of torch 2.13.0 (Linux x86-64), its CPU build instead; unset, pip's own config
  .venv/bin/python -m pip install -q --disable-pip-version-check ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
  echo "$key" > "$stamp"
fi

# Real assets for the default world (GPL-2 stamps, CC0 samples). Never fatal: without them the
# default world falls back to the procedural library and says so.
# Debian's chromium drives the browser test of notebook 02 (Playwright, no browser download).
pkgs=""
[[ -d /usr/share/tuxpaint/stamps ]] || pkgs="$pkgs tuxpaint-stamps-default"
[[ -d /usr/share/sonic-pi/samples ]] || pkgs="$pkgs sonic-pi-samples"
[[ -x /usr/bin/chromium ]] || pkgs="$pkgs chromium"
if [[ -n $pkgs ]]; then
  sudo=""; [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && sudo="sudo -n"
  if command -v apt-get >/dev/null && { [[ $(id -u) -eq 0 ]] || [[ -n $sudo ]]; }; then
    echo "== installing Debian packages: $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q $pkgs >/dev/null 2>&1 \
      || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q $pkgs >/dev/null 2>&1; } \
      || echo "note: could not install$pkgs; without the stamps the default world uses the procedural library, without chromium the browser test is skipped"
  else
    echo "note: apt-get is not usable here; the default world uses the procedural library and the browser test is skipped"
  fi
fi
