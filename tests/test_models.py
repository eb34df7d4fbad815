"""Whole models: shapes, gradients to every parameter, switches, checkpoint loading."""
import pytest
import torch

from conftest import small_memory
from avs_lib.models import ABLATIONS, build_model, count_parameters
from avs_lib.models.mit import MIT_SIZES, MiTEncoder, load_backbone_state_dict
from avs_lib.training.losses import avsac_loss, ddeseg_loss
from dataclasses import replace


def _inputs(batch=2, size=64, audio_dim=16):
    torch.manual_seed(0)
    return torch.randn(batch, 3, size, size), torch.randn(batch, audio_dim), (torch.rand(batch, size, size) > 0.5).long()


def _assert_all_gradients(model, loss, zero_allowed: bool = False):
    """Every parameter trains: none frozen by mistake, each with a finite gradient that is not all
    zeros (``zero_allowed``: a model whose zero-initialised branches give their inputs no gradient
    at step 0, which the caller checks on its own)."""
    loss.backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert not frozen, f"parameters that do not train: {frozen[:10]}"
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing[:10]}"
    dead = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert zero_allowed or not dead, f"an all-zero gradient for {dead[:10]}"
    assert torch.isfinite(loss)


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_ddeseg_ablations_train_every_parameter(ablation):
    image, audio, masks = _inputs()
    model = build_model("ddeseg", ablation=ablation, memory=small_memory()).train()
    out = model(image, audio)
    assert out.logits.shape == masks.shape
    assert len(out.tokens) == 4 and out.tokens[0].shape[1] == (1 if ablation == "baseline" else 5)
    _assert_all_gradients(model, ddeseg_loss(out.logits, masks))


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_ddeseg_semantic_and_variants(variant):
    image, audio, _ = _inputs()
    masks = torch.randint(0, 4, (2, 64, 64))
    model = build_model("ddeseg", variant=variant, memory=small_memory(), num_classes=4).train()
    out = model(image, audio)
    assert out.logits.shape == (2, 4, 64, 64)
    assert out.scores.shape == (2, 5)
    _assert_all_gradients(model, ddeseg_loss(out.logits, masks))


def test_ddeseg_with_efficientnet_backbone():
    image, audio, masks = _inputs()
    model = build_model("ddeseg", backbone="efficientnet_lite0", memory=small_memory()).train()
    out = model(image, audio)
    assert [f.shape[1] for f in out.features] == [24, 40, 112, 320]
    _assert_all_gradients(model, ddeseg_loss(out.logits, masks))


@pytest.mark.parametrize("frozen_stages", [1, 3])
def test_frozen_stages_keep_their_weights_and_statistics(frozen_stages):
    image, audio, masks = _inputs()
    model = build_model("ddeseg", backbone="efficientnet_lite0", memory=small_memory(), frozen_stages=frozen_stages)
    cnn = model.encoder.cnn
    last_frozen = model.encoder.bounds[frozen_stages]  # blocks [0, last_frozen) are frozen, the rest train
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    assert not cnn._bn0.training and not cnn._blocks[last_frozen - 1].training and cnn._blocks[last_frozen].training
    ddeseg_loss(model(image, audio).logits, masks).backward()
    optimiser.step()
    after = model.state_dict()
    frozen = [f"encoder.cnn._conv_stem.", "encoder.cnn._bn0."] + [f"encoder.cnn._blocks.{i}." for i in range(last_frozen)]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not [k for k in changed if k.startswith(tuple(frozen))]  # weights and running statistics alike
    assert f"encoder.cnn._blocks.{last_frozen}._bn1.running_mean" in changed  # the next block trains
    assert any(k.startswith("encoder.fusion.0.") for k in changed)  # stage 1's fusion trains
    assert set(after) == set(before)  # no new state-dict names
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_model("ddeseg", memory=small_memory(), frozen_stages=1)  # a MiT's fusion is inside its blocks


@pytest.mark.parametrize("start", ["no_norm", "trunk", "identity"])
def test_fusion_start_keeps_the_pretrained_trunk_and_still_trains(start):
    image, audio, masks = _inputs()
    model = build_model("ddeseg", backbone="efficientnet_lite0", memory=small_memory(), fusion_start=start).eval()
    with torch.no_grad():
        out = model(image, audio)
        # the bare backbone, stage by stage, without any fusion block or norm in between
        x, bare = model.encoder.cnn.stem(image), []
        for first, last in zip(model.encoder.bounds, model.encoder.bounds[1:]):
            x = model.encoder.cnn.run_blocks(x, first, last)
            bare.append(x)
        silent = model(image, torch.zeros_like(audio))
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.encoder.norms)
    if start == "identity":  # every residual branch starts at 0: the trunk is the backbone, the audio not heard
        assert all(torch.equal(f, b) for f, b in zip(out.features, bare))
        assert torch.equal(out.logits, silent.logits)
    else:  # the audio cross-attention is live from the first step (no_norm: every branch is)
        assert not torch.allclose(out.features[0], bare[0])
        assert not torch.allclose(out.logits, silent.logits)
    if start == "trunk":  # on a silent input the blocks are the identity: only the audio moves the trunk
        with torch.no_grad():
            quiet = model.encoder.run_blocks(1, bare[0].flatten(2).transpose(1, 2), *bare[0].shape[-2:], None)[0]
        assert torch.equal(quiet, bare[0])
    model.train()
    _assert_all_gradients(model, ddeseg_loss(model(image, audio).logits, masks), zero_allowed=start != "no_norm")
    if start != "no_norm":
        block = model.encoder.fusion[1][0]
        zeroed = block.mlp.fc2.weight
        assert torch.equal(zeroed, torch.zeros_like(zeroed)) and zeroed.grad.abs().sum() > 0  # the zeroed layers learn
        # behind a zeroed output a branch gets no gradient at step 0, and does once that output has moved
        behind = block.cross_attn.attn.in_proj_weight if start == "identity" else block.mlp.fc1.weight
        assert behind.grad.abs().sum() == 0
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        model.zero_grad()
        ddeseg_loss(model(image, audio).logits, masks).backward()
        assert behind.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_model("ddeseg", memory=small_memory(), fusion_start=start)
    with pytest.raises(ValueError, match="choose one of"):
        build_model("ddeseg", backbone="efficientnet_lite0", memory=small_memory(), fusion_start="zero")


def test_avsac_trains_every_parameter_and_uses_audio():
    image, audio, masks = _inputs()
    model = build_model("avsac", audio_dim=16).train()
    out = model(image, audio)
    assert out.logits.shape == masks.shape and out.vga.shape[1] == 16
    _assert_all_gradients(model, avsac_loss(out.logits, masks, out.audio, out.agv))
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(image, audio).logits, model(image, torch.zeros_like(audio)).logits)


def test_avsac_on_lite0_trains_every_parameter_and_loads_the_given_backbone(tmp_path):
    from avs_lib.models.efficientnet import EfficientNetLite0

    torch.manual_seed(3)
    source = EfficientNetLite0()  # random weights: a file the model cannot have by chance
    torch.save(source.state_dict(), tmp_path / "lite0.pt")
    image, audio, masks = _inputs()
    model = build_model("avsac", audio_dim=16, backbone="efficientnet_lite0",
                        pretrained_backbone=str(tmp_path / "lite0.pt")).train()
    assert torch.equal(model.encoder.cnn._blocks[5]._depthwise_conv.weight, source._blocks[5]._depthwise_conv.weight)
    assert model.backbone_report is not None and not model.backbone_report.missing
    assert [p.in_channels for p in model.projections] == [24, 40, 112, 320] and model.encoder.dims == [24, 40, 112, 320]
    out = model(image, audio)
    assert out.logits.shape == masks.shape
    _assert_all_gradients(model, avsac_loss(out.logits, masks, out.audio, out.agv))
    scratch = build_model("avsac", audio_dim=16, backbone="efficientnet_lite0")
    assert not torch.equal(scratch.encoder.cnn._blocks[5]._depthwise_conv.weight,
                           source._blocks[5]._depthwise_conv.weight)
    with pytest.raises(ValueError, match="mit_b"):
        build_model("avsac", audio_dim=16, pretrained_backbone=True)  # True is Lite0's wheel, not a MiT


def test_audio_changes_ddeseg_output():
    image, audio, _ = _inputs()
    model = build_model("ddeseg", memory=small_memory()).eval()
    with torch.no_grad():
        assert not torch.allclose(model(image, audio).logits, model(image, audio.flip(0)).logits)


def test_b5_shapes_and_parameter_count():
    model = build_model("ddeseg", size="b5", audio_dim=768, memory_classes=71)
    counts = count_parameters(model)
    # MiT-b5's own backbone (no fusion) has 81.4M parameters; fusion adds cross-attention to all 52 blocks
    plain = sum(p.numel() for p in MiTEncoder(replace(MIT_SIZES["b5"], fusion=False)).parameters())
    assert 81e6 < plain < 82e6
    assert counts["encoder"] > plain
    assert 95e6 < counts["total"] < 120e6, counts  # the paper reports 103.84M trainable
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64), torch.randn(1, 768))
    assert out.logits.shape == (1, 64, 64)
    assert [f.shape[1] for f in out.features] == [64, 128, 320, 512]


def test_mit_checkpoint_loading_reports_mismatches(tmp_path):
    plain = MiTEncoder(replace(MIT_SIZES["tiny"], fusion=False))
    state = {f"module.{k}": v.clone() for k, v in plain.state_dict().items()}
    state["head.weight"] = torch.zeros(1000, 128)
    for name in ("patch_embed1.proj.weight", "block1.0.attn.q.weight", "block1.0.attn.kv.weight",
                 "block1.0.attn.sr.weight", "block1.0.mlp.dwconv.dwconv.weight", "norm4.weight"):
        assert f"module.{name}" in state  # the official MiT / PVT-v2 names
    path = tmp_path / "mit_tiny.pth"
    torch.save({"state_dict": state}, path)
    fused = MiTEncoder(MIT_SIZES["tiny"])
    report = load_backbone_state_dict(fused, path)
    assert report.ok and not report.unexpected
    assert report.new_in_model and all(".cross_" in k for k in report.new_in_model)
    assert torch.equal(fused.state_dict()["block3.0.attn.q.weight"], plain.state_dict()["block3.0.attn.q.weight"])
    state.pop("module.block2.0.attn.q.weight")
    state["module.norm4.weight"] = torch.zeros(7)
    with pytest.raises(ValueError, match="block2.0.attn.q.weight") as error:
        load_backbone_state_dict(fused, state)
    assert "norm4.weight" in str(error.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone_state_dict(fused, tmp_path / "nope.pth")


def test_avsac_on_mit_loads_a_mit_file_and_refuses_frozen_stages(tmp_path):
    from avs_lib.models.avsac import avsac_switches

    torch.manual_seed(5)
    plain = MiTEncoder(replace(MIT_SIZES["tiny"], fusion=False))
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.state_dict().items()}}, tmp_path / "mit_tiny.pth")
    model = build_model("avsac", audio_dim=16, pretrained_backbone=str(tmp_path / "mit_tiny.pth"))
    assert model.backbone_report.ok and not model.backbone_report.unexpected
    assert torch.equal(model.encoder.state_dict()["block3.0.attn.q.weight"], plain.state_dict()["block3.0.attn.q.weight"])
    assert avsac_switches({"backbone": "efficientnet_lite0", "tau": 0.5, "frozen_stages": 0}) == {
        "backbone": "efficientnet_lite0"}
    with pytest.raises(ValueError, match="frozen_stages=2"):
        avsac_switches({"backbone": "efficientnet_lite0", "frozen_stages": 2})


def test_memory_mismatch_is_a_clear_error():
    model = build_model("ddeseg", audio_dim=16, memory_classes=7, k=2, m=3)
    with pytest.raises(ValueError, match="rebuild the memory"):
        model.set_memory(small_memory(classes=6))
    with pytest.raises(ValueError, match="baseline"):
        build_model("baseline").set_memory(small_memory())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_cuda():
    image, audio, masks = _inputs()
    model = build_model("ddeseg", memory=small_memory()).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(image.cuda(), audio.cuda())
    assert torch.isfinite(out.logits.float()).all()
