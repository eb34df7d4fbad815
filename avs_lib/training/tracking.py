"""Experiment tracking for ``avs train``: TensorBoard event files by default, W&B offline as an option.

``config.tracking`` picks the backends: ``tensorboard`` (default), ``wandb``, ``both`` or ``none``.

* TensorBoard: ``<out>/tensorboard/`` gets, per step, ``train/loss`` and ``train/lr``; per epoch,
  ``train/epoch_loss``, ``val/J``, ``val/F``, ``val/JF`` and an image ``val/masks`` (a few validation
  frames: the ground truth on top, the predicted mask below). Open it with
  ``tensorboard --logdir runs/``. On resume, events from the steps the run does again are purged
  (``purge_step``), so the curves have no doubled segment.
* W&B (``pip install -e '.[wandb]'``): ``wandb.init(mode="offline")`` into ``<out>/wandb/``; the same
  numbers and masks. Nothing leaves the machine; ``wandb sync <out>/wandb/offline-run-*`` uploads
  it later. Without the package, ``tracking=wandb`` is an error that says how to install it.

Only rank 0 of a distributed run tracks.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path

import torch

TRACKING_CHOICES = ("tensorboard", "wandb", "both", "none")


class Tracker:
    """Writes scalars and mask images to the chosen backends; every method is a no-op when none is."""

    def __init__(self, out: str | Path, kind: str = "tensorboard", config: dict | None = None, purge_step: int | None = None):
        self.out = Path(out)
        self.tb = None
        self.wandb_run = None
        if kind in ("tensorboard", "both"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:  # tensorboard is a dependency; a broken install says why
                raise ValueError(f"tracking={kind} needs the tensorboard package ({error}); install it with "
                                 "`pip install -c constraints.txt tensorboard` or pass tracking=none") from None
            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=purge_step)
        if kind in ("wandb", "both"):
            try:
                import wandb
            except ImportError:
                raise ValueError(f"tracking={kind} needs the optional wandb package: "
                                 "pip install -c constraints.txt -e '.[wandb]' (or pass tracking=tensorboard)") from None
            run_id_file = self.out / "wandb_id.txt"
            # one W&B run per run folder: a resume appends to it
            run_id = run_id_file.read_text().strip() if run_id_file.exists() else secrets.token_hex(6)
            run_id_file.write_text(run_id)
            self.wandb_run = wandb.init(mode="offline", dir=str(self.out), project="avs-workbench", name=self.out.name,
                                        id=run_id, resume="allow", config=json.loads(json.dumps(config or {}, default=str)))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(name, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(dict(values), step=step)

    def masks(self, name: str, truth: torch.Tensor, predicted: torch.Tensor, step: int) -> None:
        """``truth`` and ``predicted`` [N, H, W] (class indices or 0/1): one image, truth above."""
        grid = mask_grid(truth, predicted)
        if self.tb is not None:
            self.tb.add_image(name, grid, step, dataformats="HW")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({name: wandb.Image((grid * 255).to(torch.uint8).numpy())}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def mask_grid(truth: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """[2H, N*W] float in [0, 1]: the frames side by side, truth in the top row, prediction below;
    class indices are spread over the grey levels."""
    truth = torch.where(truth == 255, torch.zeros_like(truth), truth)  # 255: unlabelled pixels
    levels = max(1, int(max(truth.max(), predicted.max())))
    rows = [torch.cat(list(m.float() / levels), dim=1) for m in (truth, predicted)]
    return torch.cat(rows, dim=0).clamp(0, 1)


def predicted_masks(logits: torch.Tensor) -> torch.Tensor:
    """Class indices [N, H, W] from semantic logits [N, C, H, W], or 0/1 from binary logits [N, H, W]
    (foreground where sigmoid > 0.5, as the metrics threshold them)."""
    if logits.dim() == 3:
        return (logits > 0).long()
    return logits.argmax(1)
