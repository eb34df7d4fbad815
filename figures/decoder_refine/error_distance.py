"""Where a run's wrong test pixels lie, by their distance to the true mask's outline
(``avs_lib.analysis.evaluation.outline_distance``).

python figures/decoder_refine/error_distance.py RUN_DIR [RUN_DIR ...]   (from the repository root)

Prints one JSON line per run (the share of its wrong pixels within 1, 2, 4, 8 px of the outline and
farther, the wrong pixels per frame, and those within 2 px split into drawn outside the mask and left
out inside it), then the same for the truth itself seen at stride 2 on the last run's test frames
(``truth_at_stride``, ``resolution_bound``'s round trip): what the stride-2 grid alone costs."""
import json
import sys
from pathlib import Path

import torch

from avs_lib.analysis.evaluation import outline_distance, truth_at_stride
from avs_lib.training.predict import load_trained, predict

for run in sys.argv[1:]:
    model, config, prepared = load_trained(Path(run) / "best.pt")
    frames = prepared.test
    logits = predict(model, frames, torch.device("cpu"), bf16=config.bf16, cpu_bf16=config.cpu_bf16)
    keep = frames.valid
    masks = frames.masks[keep].bool()
    print(json.dumps({"run": run, **outline_distance(logits[keep] > 0, masks)}))

print(json.dumps({"run": "the truth at stride 2", **outline_distance(truth_at_stride(masks, 2), masks)}))
