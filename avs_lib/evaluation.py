"""A trained model's evaluation table: every metric convention, and the two trivial baselines
that say what a number is worth on this data.

* all foreground: every pixel predicted as sounding (what a model scores without looking);
* audio zeroed: the same model with its audio input replaced by zeros at test time (what it
  scores without listening). A model that uses the sound beats both.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from avs_lib.metrics import CONVENTIONS, evaluate


def all_foreground(frames, convention: str = "per_frame", batch_size: int = 5) -> dict:
    """J, F, JF of predicting every pixel of every annotated frame as sounding."""
    keep = frames.valid
    return evaluate(torch.full(frames.masks[keep].shape, 20.0), frames.masks[keep], convention=convention,
                    batch_size=batch_size)


def evaluation_table(model, frames, config, device: torch.device | str = "cpu") -> list[dict]:
    """Rows {"evaluation", "J", "F", "J&F"}: the model in every convention of ``avs_lib.metrics``,
    then with its audio zeroed and the all-foreground prediction (both in ``config.convention``)."""
    from avs_lib.train import evaluate_model

    device = torch.device(device)
    rows = []
    for convention in CONVENTIONS:
        r = evaluate_model(model, frames, device, replace(config, convention=convention))
        rows.append({"evaluation": convention, "J": r["J"], "F": r["F"], "J&F": r["JF"]})
    r = evaluate_model(model, frames, device, replace(config, zero_audio=True))
    rows.append({"evaluation": f"{config.convention}, audio zeroed", "J": r["J"], "F": r["F"], "J&F": r["JF"]})
    r = all_foreground(frames, config.convention, config.eval_batch_size)
    rows.append({"evaluation": f"{config.convention}, all foreground", "J": r["J"], "F": r["F"], "J&F": r["JF"]})
    return rows
