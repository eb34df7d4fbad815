#!/bin/bash
# On a bare GPU machine (the device tool's H200: Python 3.12 with CUDA PyTorch, 16 cores), from the
# repo root, with .gpu_carry/ and .whl/ from pack.py alongside: compose the default world again, check
# it against this machine's manifest, and run `avs ablation` on it, several runs at once, inside a
# time budget. What comes back lies in $OUT: the report (ablation/), the world check, the log and
# every run's small files (runs.tar.gz). Where the world matches, the runs of the committed report
# (figures/ablation/runs.tar.gz) are reused (FRESH_RUNS=1 trains every run again).
# Usage: bash scripts/gpu_ablation/run_on_gpu.sh SECONDS PARALLEL
# SWITCHES="switches.decoder_stride=2" (space-separated key=value): settings on top of the config for
# every run, e.g. the next test bed's (docs/findings.md, "A decoder at stride 2"). The config's tokens
# ask in the fusion since 2026-12-07; the committed report's runs were made with the cells asking, so
# reusing them needs SWITCHES="switches.fusion_query=visual bn_momentum=null".
set -uo pipefail
limit=${1:-570}      # seconds this script may take in all
parallel=${2:-12}    # runs trained at once
start=$(date +%s)
out=${OUT:-/tmp/out}
mkdir -p "$out/ablation"
log="$out/ablation.log"
exec > >(tee -a "$log") 2>&1
elapsed() { echo $(( $(date +%s) - start )); }
echo "== $(date -u) start"

# (a rehearsal on a machine that has the packages: PY=.venv/bin/python SKIP_WHEELS=1)
PY=${PY:-python3}
[ -n "${SKIP_WHEELS:-}" ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
cp -r .gpu_carry/assets/. / || exit 1
# the background photos where this machine's scikit-image and scikit-learn keep theirs
"$PY" - <<'PY' || exit 1
import shutil, skimage, sklearn
from pathlib import Path
for package, folder in ((skimage, "data"), (sklearn, "datasets/images")):
    for photo in Path(".gpu_carry/photos", package.__name__).iterdir():
        shutil.copy2(photo, Path(package.__file__).parent / folder / photo.name)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, numpy, PIL, librosa, soundfile; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'Pillow', PIL.__version__, 'librosa', librosa.__version__)" || exit 1

# several processes share the GPU: MPS lets their small kernels run side by side; without it they take turns
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
    if timeout 60 "$PY" -c "import torch; torch.ones(1, device='cuda').sum().item()" 2>/dev/null; then echo "MPS on"
    else echo quit | nvidia-cuda-mps-control; echo "MPS failed its check: off"; fi
elif pgrep -x nvidia-cuda-mps-control >/dev/null; then echo "MPS on (started by an earlier call on this machine)"
else echo "MPS not available"; fi

echo "== $(elapsed) s: the default world, composed again (avs pipeline --no-notebooks)"
"$PY" -m avs_lib.cli pipeline --no-notebooks --workers 16 --figures /tmp/figures || exit 1
"$PY" scripts/gpu_ablation/check_world.py .gpu_carry/manifest.json.gz data/default_world > "$out/world_check.json"
head -c 400 "$out/world_check.json"; echo
cp -r .gpu_carry/cache/. data/default_world/cache/
visual=$(ls "$PWD"/.gpu_carry/cache/pretrained_visual_*.pt)
# the committed report's runs (small files) are finished runs of the same world: the ablation reuses
# them and trains only what is missing, or whose setting has changed since (set aside, trained again)
[ -z "${FRESH_RUNS:-}" ] || rm -rf runs/ablation  # FRESH_RUNS=1: every run trained again, even on a warm machine
if [ -z "${FRESH_RUNS:-}" ] && [ -f figures/ablation/runs.tar.gz ] && [ ! -d runs/ablation ] && "$PY" -c "
import json, sys; c = json.load(open(sys.argv[1])); sys.exit(1 if c['different_or_missing'] or c['extra'] else 0)" \
    "$out/world_check.json"
then tar xzf figures/ablation/runs.tar.gz && echo "unpacked $(ls runs/ablation/*/metrics.json | wc -l) runs of the committed report"
fi

echo "== $(elapsed) s: the ablation, $parallel runs at once"
left=$(( limit - $(elapsed) ))
budget=$("$PY" -c "print(max(0, ($left - 200) / 60))")  # the last runs start 200 s before the end
read -r -a extra <<< "${SWITCHES:-}"  # before the options: argparse takes the overrides in one run
[ ${#extra[@]} -eq 0 ] || echo "settings on top of the config: ${extra[*]}"
args=(device=${DEVICE:-cuda} bf16=false "switches.pretrained_backbone=$visual" "${extra[@]}" --out runs/ablation
      --figures "$out/ablation" --set-aside-changed)
# every 20 s: GPU use, load and finished runs, to tell a busy GPU from workers waiting on their CPUs
( while sleep 20; do echo "$(elapsed) s: gpu $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader \
    2>/dev/null | tr -d '\n'); load $(cut -d' ' -f1 /proc/loadavg); finished $(ls runs/ablation/*/metrics.json \
    2>/dev/null | wc -l)"; done > "$out/utilisation.txt" ) &
sampler=$!
timeout $(( left - 75 )) "$PY" -m avs_lib.cli ablation --parallel "$parallel" --time-budget "$budget" "${args[@]}" \
    > "$out/ablation_progress.txt" 2>&1
status=$?
kill $sampler 2>/dev/null
pkill -f "avs_lib.cli ablation"; pkill -f "multiprocessing.spawn"; sleep 2  # workers left by a cut-off parent
# what the ablation reused, set aside and trained, as it said when it started
grep -E "planned runs finished and reused|its settings changed" "$out/ablation_progress.txt"
tail -c 3000 "$out/ablation_progress.txt"
if [ $status -eq 124 ] || [ ! -s "$out/ablation/ablation.md" ]; then
    echo "== $(elapsed) s: cut off (status $status): the report over the finished runs"
    timeout 60 "$PY" -m avs_lib.cli ablation --time-budget 0 "${args[@]}" > /dev/null 2>&1
fi
rm -f "$out/ablation_progress.txt"
tar czf "$out/runs.tar.gz" runs/ablation/*/{config.json,metrics.json,log.jsonl,analyses.json} 2>/dev/null
echo "== $(elapsed) s: done ($(ls runs/ablation/*/metrics.json 2>/dev/null | wc -l) runs finished)"
