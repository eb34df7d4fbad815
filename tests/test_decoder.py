"""The decoder's stride-2 refinement (``DDESegConfig.decoder_stride=2``) and its stride-1 stage
(``decoder_stride=1``): where they predict, what they read, and that the stride-4 decoder is left as
it was."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avs_lib.analysis.evaluation import decoder_stride
from avs_lib.core.config import ConfigError, load_config
from avs_lib.models import build_model, hook_names, run_with_hooks
from avs_lib.models.decoder import SegFormerHead


def _head(fine_dim=16, seed=0, refine_blocks=0, pixel_dim=None):
    torch.manual_seed(seed)
    return SegFormerHead([8, 12], embed_dim=16, num_outputs=1, fine_dim=fine_dim, refine_dim=8,
                         refine_blocks=refine_blocks, pixel_dim=pixel_dim).eval()


def _reach_of_a_nudge(head: SegFormerHead, side: int, y: int, x: int, seed: int) -> torch.Tensor:
    """How far (in logits, Chebyshev) from (y, x) the logits move when that pixel of the fine map
    [1, 16, side, side] is nudged: one distance per logit that moved."""
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(1, 8, side // 2, side // 2, generator=g), torch.randn(1, 12, side // 4, side // 4, generator=g)]
    fine = torch.randn(1, 16, side, side, generator=g)
    nudged = fine.clone()
    nudged[0, :, y, x] += 3.0
    with torch.no_grad():
        change = (head(features, nudged) - head(features, fine)).abs()[0, 0]  # [side, side]
    assert change.shape == (side, side)
    rows, cols = torch.nonzero(change > 1e-6, as_tuple=True)
    assert len(rows) > 0
    return torch.maximum((rows - y).abs(), (cols - x).abs())


@settings(max_examples=12, deadline=None)
@given(y=st.integers(0, 15), x=st.integers(0, 15), seed=st.integers(0, 3))
def test_a_fine_pixel_moves_only_the_logits_around_it(y, x, seed):
    # the refinement is a 1x1 conv then a depthwise 3x3 at stride 2: one pixel of the fine map reaches
    # the logits within one pixel of it, and none further
    assert _reach_of_a_nudge(_head(seed=seed), 16, y, x, seed).max() <= 1


@settings(max_examples=12, deadline=None)
@given(y=st.integers(0, 23), x=st.integers(0, 23), blocks=st.integers(1, 2), seed=st.integers(0, 3))
def test_each_refinement_block_widens_the_view_by_twice_its_dilation(y, x, blocks, seed):
    # blocks at dilations 1, 2: a fine pixel reaches the logits within 1 + 2 * (1 + 2 + ...) pixels,
    # and beyond the one pixel that the refinement without blocks reaches
    head = _head(seed=seed, refine_blocks=blocks)
    for m in head.modules():  # BatchNorm shifted up, so that the ReLUs pass what changes rather than drop it
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.constant_(m.bias, 2.0)
    reach = _reach_of_a_nudge(head, 24, y, x, seed)
    assert 1 < reach.max() <= 1 + 2 * sum(2 ** i for i in range(blocks))


def test_the_refinement_blocks_are_new_weights_only_where_asked_for():
    plain, deep = _lite0(decoder_stride=2), _lite0(decoder_stride=2, decoder_refine_blocks=2, decoder_refine_dim=24)
    assert plain.decoder.refine_blocks is None
    new = set(deep.state_dict()) - set(plain.state_dict())
    assert new and all(k.startswith("decoder.refine_blocks.") for k in new)
    # a checkpoint of the first refinement loads strictly into a model built with the defaults
    _lite0(decoder_stride=2).load_state_dict(plain.state_dict(), strict=True)
    assert deep.decoder.predict.in_channels == 24


def test_the_head_takes_the_fine_map_exactly_when_built_for_it():
    features = [torch.randn(2, 8, 8, 8), torch.randn(2, 12, 4, 4)]
    with torch.no_grad():
        assert _head(fine_dim=None)(features).shape == (2, 1, 8, 8)
        assert _head()(features, torch.randn(2, 16, 16, 16)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="stride-2 refinement"):
        _head()(features)
    with pytest.raises(ValueError, match="stride-2 refinement"):
        _head(fine_dim=None)(features, torch.randn(2, 16, 16, 16))


@settings(max_examples=12, deadline=None)
@given(y=st.integers(0, 31), x=st.integers(0, 31), seed=st.integers(0, 3))
def test_a_frame_pixel_moves_the_stride_one_logits_within_three_pixels(y, x, seed):
    # the stride-1 stage reads the frame through two 3x3 convs and mixes at 3x3: one frame pixel
    # reaches the logits at most 3 pixels away, and it does reach them (the frame is read)
    head = _head(seed=seed, pixel_dim=6)
    for m in head.modules():  # BatchNorm shifted up, so that the ReLUs pass what changes rather than drop it
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.constant_(m.bias, 2.0)
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(1, 8, 8, 8, generator=g), torch.randn(1, 12, 4, 4, generator=g)]
    fine, frame = torch.randn(1, 16, 16, 16, generator=g), torch.randn(1, 3, 32, 32, generator=g)
    nudged = frame.clone()
    nudged[0, :, y, x] += 3.0
    with torch.no_grad():
        change = (head(features, fine, nudged) - head(features, fine, frame)).abs()[0, 0]  # [32, 32]
    rows, cols = torch.nonzero(change > 1e-6, as_tuple=True)
    assert len(rows) > 0
    reach = torch.maximum((rows - y).abs(), (cols - x).abs())
    assert reach.max() == 3  # two 3x3 convs on the frame, one 3x3 after the mix (a 32 px frame leaves room)


def test_the_head_takes_the_frame_exactly_when_built_with_a_stride_one_stage():
    features, fine = [torch.randn(2, 8, 8, 8), torch.randn(2, 12, 4, 4)], torch.randn(2, 16, 16, 16)
    with torch.no_grad():
        assert _head(pixel_dim=6)(features, fine, torch.randn(2, 3, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="stride-1 stage"):
        _head(pixel_dim=6)(features, fine)
    with pytest.raises(ValueError, match="stride-1 stage"):
        _head()(features, fine, torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="fine_dim"):
        _head(fine_dim=None, pixel_dim=6)


def test_a_stride_one_model_predicts_at_the_frame_and_adds_its_stage_before_the_prediction():
    model = _lite0(decoder_stride=1, decoder_refine_blocks=1).train()
    out = model(torch.randn(2, 3, 64, 64), torch.randn(2, 16))
    assert out.logits.shape == (2, 64, 64) and out.decoder_size == (64, 64)
    assert decoder_stride(model, 64) == 1
    out.logits.mean().backward()
    missing = [n for n, p in model.decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    stride_two, stride_one = _lite0(decoder_stride=2, decoder_refine_blocks=1).state_dict(), model.state_dict()
    new = set(stride_one) - set(stride_two)
    assert new and all(k.startswith("decoder.pixel_refine.") for k in new)
    assert set(stride_two) <= set(stride_one)
    # the weights both have keep their shapes, but the prediction, which reads the stage's 16 channels
    changed = {k for k in stride_two if stride_two[k].shape != stride_one[k].shape}
    assert changed == {"decoder.predict.weight"} and stride_one["decoder.predict.weight"].shape[1] == 16
    assert "decoder.fine" in hook_names(model)


def _lite0(**switches):
    torch.manual_seed(0)
    return build_model("ddeseg", backbone="efficientnet_lite0", audio_dim=16, memory_classes=8, **switches)


@pytest.mark.parametrize("blocks", [0, 2])
def test_a_stride_two_model_predicts_at_half_the_frame_and_trains_every_decoder_weight(blocks):
    model = _lite0(decoder_stride=2, decoder_refine_blocks=blocks).train()
    images, audio = torch.randn(2, 3, 64, 64), torch.randn(2, 16)
    out = model(images, audio)
    assert out.logits.shape == (2, 64, 64)
    assert out.decoder_size == (32, 32)
    assert decoder_stride(model, 64) == 2 and decoder_stride(_lite0(), 64) == 4
    out.logits.mean().backward()
    missing = [n for n, p in model.decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing  # an unused weight would also stall a DDP run


def test_the_fine_map_is_a_named_activation_that_reaches_the_logits_through_the_decoder_alone():
    model = _lite0(decoder_stride=2).eval()
    names = hook_names(model)
    assert "decoder.fine" in names and "decoder.fine" not in hook_names(_lite0())
    assert names.index("stage4.features") < names.index("decoder.fine") < names.index("decoder.logits")
    images, audio = torch.randn(3, 3, 64, 64), torch.randn(3, 16)
    cache = {}

    def keep(value):
        cache["fine"] = value.clone()  # returns None: reads only

    with torch.no_grad():
        with run_with_hooks(model, {"decoder.fine": keep}):
            plain = model(images, audio)
        with run_with_hooks(model, {"decoder.fine": lambda v: torch.zeros_like(v)}):
            blind = model(images, audio)
    assert cache["fine"].shape == (3, 16, 32, 32)
    assert not torch.allclose(plain.logits, blind.logits)  # the decoder reads it
    for a, b in zip(plain.features, blind.features):  # and only the decoder: the encoder ran on the map as computed
        assert torch.equal(a, b)


def test_the_stride_is_checked_where_it_is_set(tmp_path):
    with pytest.raises(ValueError, match="decoder_stride=3"):
        _lite0(decoder_stride=3)
    for stride in (2, 1):
        with pytest.raises(ValueError, match="efficientnet_lite0"):
            build_model("ddeseg", audio_dim=16, memory_classes=8, decoder_stride=stride)
    with pytest.raises(ValueError, match="set decoder_stride=2"):
        _lite0(decoder_refine_blocks=2)
    with pytest.raises(ValueError, match="blocks >= 0"):
        _lite0(decoder_stride=2, decoder_refine_blocks=-1)
    path = tmp_path / "c.yaml"
    path.write_text("model: ddeseg\nswitches:\n  backbone: efficientnet_lite0\n  decoder_stride: 8\n")
    with pytest.raises(ConfigError, match="decoder_stride"):
        load_config(path)
