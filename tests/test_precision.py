"""The CPU speed settings (bf16 autocast, channels_last) against fp32 on a small case."""
import pytest
import torch

from avs_lib.models import build_model
from avs_lib.training.losses import ddeseg_loss


def _model(backbone: str) -> torch.nn.Module:
    torch.manual_seed(0)
    switches = {"audio_dim": 16, "memory_classes": 8, "backbone": backbone, "decoder_dropout": 0.0}
    return build_model("ddeseg", size="tiny", **switches).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=g)
    audio = torch.randn(2, 16, generator=g)
    masks = (torch.rand(2, 64, 64, generator=g) > 0.5).long()
    return images, audio, masks


@pytest.mark.parametrize("backbone", ["mit", "efficientnet_lite0"])
def test_bf16_autocast_on_cpu_stays_close_to_fp32(backbone):
    model, (images, audio, masks) = _model(backbone), _inputs()
    with torch.no_grad():
        reference = model(images, audio).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            raw = model(images, audio).logits
        low = raw.float()
    # autocast took effect: the logits come out of a bf16 matmul/conv, and they differ from fp32's
    assert raw.dtype == torch.bfloat16 and reference.shape == low.shape
    assert (low - reference).abs().max() > 0
    scale = reference.abs().mean()
    assert (low - reference).abs().mean() / scale < 0.05  # bf16 keeps 8 bits of mantissa
    loss_fp32, loss_bf16 = ddeseg_loss(reference, masks).item(), ddeseg_loss(low, masks).item()
    assert abs(loss_bf16 - loss_fp32) / loss_fp32 < 0.01


def test_channels_last_gives_the_same_logits():
    model, (images, audio, _) = _model("efficientnet_lite0"), _inputs()
    with torch.no_grad():
        reference = model(images, audio).logits
        nhwc = model.to(memory_format=torch.channels_last)
        other = nhwc(images.contiguous(memory_format=torch.channels_last), audio).logits
    torch.testing.assert_close(other, reference, rtol=1e-4, atol=1e-4)
