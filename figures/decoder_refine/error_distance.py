"""Where a run's wrong test pixels lie, by their distance to the true mask's outline.

python figures/decoder_refine/error_distance.py RUN_DIR [RUN_DIR ...]   (from the repository root)

For every annotated test frame, each wrong pixel (predicted and not in the mask, or in the mask and
not predicted) is put in a band by its Euclidean distance, in frame pixels, to the nearest pixel of
the other side of the true outline (scipy's distance transform). Errors within a pixel or two of the
outline are the outline's placement; errors far from it are whole parts drawn or left out. Prints
one JSON line per run: the share of wrong pixels in each band, the wrong pixels per frame, and
those within 2 px split into drawn outside the mask and left out inside it; then
the same for the truth itself seen at stride 2 (``avs_lib.analysis.evaluation.resolution_bound``'s
round trip: each mask averaged over 2 x 2 cells, upsampled bilinearly, cut at 0.5), on the last
run's test frames: what the stride-2 grid alone costs."""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from avs_lib.training.predict import load_trained, predict

BANDS = (1.5, 2.5, 4.5, 8.5)  # upper edges, frame pixels: <= 1, <= 2, <= 4, <= 8, farther


def error_bands(predicted: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Counts of wrong pixels per band (len(BANDS) + 1) for one frame's boolean [H, W] arrays, then
    two more: the wrong pixels within 2 px of the outline drawn outside the mask, and left out inside it
    (one far larger than the other would say the edges sit systematically too far out or in)."""
    # inside the mask: distance to the nearest background pixel; outside: to the nearest mask pixel
    distance = np.where(mask, distance_transform_edt(mask), distance_transform_edt(~mask))
    wrong = distance[predicted != mask]
    near = distance <= BANDS[1]
    return np.concatenate([np.bincount(np.digitize(wrong, BANDS), minlength=len(BANDS) + 1),
                           [(predicted & ~mask & near).sum(), (~predicted & mask & near).sum()]])


NAMES = ["<=1 px", "<=2 px", "<=4 px", "<=8 px", ">8 px"]


def report(what: str, counts: np.ndarray, frames: int) -> None:
    bands, (drawn_out, left_in) = counts[:len(NAMES)], counts[len(NAMES):]
    print(json.dumps({"run": what, "frames": frames, "wrong_pixels_per_frame": round(float(bands.sum()) / frames, 1),
                      "share": {n: round(float(c) / float(bands.sum()), 3) for n, c in zip(NAMES, bands)},
                      "within_2px_per_frame": {"drawn_outside_the_mask": round(float(drawn_out) / frames, 1),
                                               "left_out_inside_it": round(float(left_in) / frames, 1)}}))


for run in sys.argv[1:]:
    model, config, prepared = load_trained(Path(run) / "best.pt")
    frames = prepared.test
    logits = predict(model, frames, torch.device("cpu"), bf16=config.bf16, cpu_bf16=config.cpu_bf16)
    keep = torch.nonzero(frames.valid, as_tuple=True)[0].tolist()
    counts = sum(error_bands((logits[i] > 0).numpy(), frames.masks[i].bool().numpy()) for i in keep)
    report(run, counts, len(keep))

masks = frames.masks[keep].float()[:, None]  # [N, 1, H, W]
seen = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(masks, 2), size=masks.shape[-2:],
                                       mode="bilinear", align_corners=False)[:, 0] > 0.5
report("the truth at stride 2", sum(error_bands(seen[i].numpy(), masks[i, 0].bool().numpy()) for i in range(len(keep))),
       len(keep))
