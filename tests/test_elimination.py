"""Elimination readings (issue 13) against independent numpy computations on small tensors: the
released aligner, the reading that can choose, the log-bias + null key fusion attention, the
within-frame paired AUC and the capacity check's loss."""
import json

import numpy as np
import pytest
import torch

from conftest import small_memory, softmax, to_numpy
from avs_lib.analysis.inspect import score_spread, separation_of_tokens, within_frame_auc
from avs_lib.models import build_model
from avs_lib.models.ddeseg import FIRST_READING
from avs_lib.models.elimination import DynamicElimination, ReleasedAligner, gumbel_soft_assignment
from avs_lib.models.mit import AudioCrossAttention
from avs_lib.training.losses import capacity_loss


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _heads(x, h):
    n, c = x.shape
    return x.reshape(n, h, c // h).transpose(1, 0, 2)  # [h, n, c/h]


# ----------------------------------------------------------------------------- released reading
def test_released_aligner_against_numpy():
    torch.manual_seed(0)
    c, n, k, kc, h = 16, 10, 4, 3, 8
    module = ReleasedAligner(c, num_centres=kc, heads=h).double().eval()
    tokens, visual = torch.randn(1, k, c, dtype=torch.float64), torch.randn(1, n, c, dtype=torch.float64)
    gated, out = module(tokens, visual)
    a, v, centres = to_numpy(tokens[0]), to_numpy(visual[0]), to_numpy(module.centres)
    o = softmax(v @ centres.T)  # Eq. 13 at tau 1, no noise in eval
    recon = o @ centres  # Eq. 14 as printed: one reconstruction per pixel [N, C]
    av = module.audio_visual
    q, kk, vv = (_heads(x, h) for x in (a @ to_numpy(av.q.weight).T, recon @ to_numpy(av.k.weight).T, recon @ to_numpy(av.v.weight).T))
    f_av = (softmax(q @ kk.transpose(0, 2, 1) / np.sqrt(c // h)) @ vv).transpose(1, 0, 2).reshape(k, c)  # no out proj
    s = softmax(f_av @ to_numpy(module.fc.weight).T[:, 0] + to_numpy(module.fc.bias)[0])  # softmax over the K tokens
    pooled = (s[:, None] * a).sum(0, keepdims=True)  # [1, C]
    va = module.visual_audio
    q2, k2, v2 = (_heads(x, h) for x in (v @ to_numpy(va.q.weight).T, pooled @ to_numpy(va.k.weight).T, pooled @ to_numpy(va.v.weight).T))
    gate = sigmoid(q2 @ k2.transpose(0, 2, 1) / np.sqrt(c // h))  # [h, N, 1]
    expected = v + (gate @ v2).transpose(1, 0, 2).reshape(n, c)  # residual
    np.testing.assert_allclose(to_numpy(out.assignment[0]), o, atol=1e-10)
    np.testing.assert_allclose(to_numpy(out.scores[0]), s, atol=1e-10)
    np.testing.assert_allclose(to_numpy(gated[0]), expected, atol=1e-10)
    np.testing.assert_allclose(to_numpy(out.gate[0]), gate[..., 0].mean(0), atol=1e-10)
    assert torch.equal(out.tokens, tokens)  # released: the tokens themselves are not scaled
    assert not any(layer.bias is not None for layer in (av.q, av.k, av.v, va.q, va.k, va.v))


def test_released_model_scores_original_tokens_at_every_stage_with_plain_blocks():
    torch.manual_seed(1)
    model = build_model("ddeseg", variant="released", memory=small_memory()).eval()
    assert not any("cross_attn" in name for name, _ in model.named_parameters())  # blocks without audio attention
    assert len(model.eliminations) == 4 and all(isinstance(m, ReleasedAligner) for m in model.eliminations)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, result: seen.append(args[0])) for m in model.eliminations]
    image, audio = torch.randn(2, 3, 64, 64), torch.randn(2, 16)
    with torch.no_grad():
        out = model(image, audio)
        derived = model.audio_tokens(audio)[0]
        assert len(seen) == 4  # the forward pass went through every stage's aligner once
        for stage, tokens in enumerate(seen):  # each stage projects the ORIGINAL derived tokens (MLP d -> 4d -> C)
            torch.testing.assert_close(tokens, model.audio_projections[stage](derived))
    for hook in hooks:
        hook.remove()
    assert out.elimination_stages == [1, 2, 3, 4] and not out.cumulative
    for scores in out.stage_scores.values():  # softmax over K: they pool the tokens into one
        torch.testing.assert_close(scores.sum(1), torch.ones(2, dtype=scores.dtype))
    torch.testing.assert_close(out.scores, out.stage_scores[4])


# ----------------------------------------------------------------------------- the reading that can choose
def test_printed_update_with_residual_and_unit_centres_against_numpy():
    torch.manual_seed(2)
    d, n, kc, k = 8, 12, 3, 4
    module = DynamicElimination(d, kc, 1, tau=0.5, centre_update="printed", centre_init="unit",
                                residual=True).double().eval()
    assert module.centres.norm(dim=1).mean() > 1.5  # randn, not randn * d^-0.5 (norm about sqrt(d) = 2.8)
    tokens, visual = torch.randn(1, k, d, dtype=torch.float64), torch.randn(1, n, d, dtype=torch.float64)
    out = module(tokens, visual)
    keys = to_numpy(module.norm_visual(visual)[0])
    o = softmax(keys @ to_numpy(module.centres).T / 0.5)
    recon = o @ to_numpy(module.centres)  # [N, d]
    att = module.cross_attention
    w_q, w_k, w_v = np.split(to_numpy(att.in_proj_weight), 3)
    b_q, b_k, b_v = np.split(to_numpy(att.in_proj_bias), 3)
    q = to_numpy(module.norm_audio(tokens)[0]) @ w_q.T + b_q
    f = softmax(q @ (recon @ w_k.T + b_k).T / np.sqrt(d)) @ (recon @ w_v.T + b_v)
    f = f @ to_numpy(att.out_proj.weight).T + to_numpy(att.out_proj.bias)
    f_av = to_numpy(tokens[0]) + f  # the residual
    hidden = f_av @ to_numpy(module.score_mlp[0].weight).T + to_numpy(module.score_mlp[0].bias)
    from scipy.special import erf
    hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))
    logits = hidden @ to_numpy(module.score_mlp[2].weight).T[:, 0] + to_numpy(module.score_mlp[2].bias)[0]
    np.testing.assert_allclose(to_numpy(out.scores[0]), sigmoid(logits), atol=1e-8)
    np.testing.assert_allclose(to_numpy(out.log_scores[0]), np.log(sigmoid(logits)), atol=1e-8)


def test_hard_gumbel_is_one_hot_forward_with_soft_gradient():
    logits = torch.randn(2, 7, 4, requires_grad=True)
    hard = gumbel_soft_assignment(logits, 1.0, noise=True, hard=True)
    torch.testing.assert_close(hard.detach(), torch.nn.functional.one_hot(hard.detach().argmax(-1), 4).float())
    (hard * torch.arange(4.0)).sum().backward()
    assert logits.grad.abs().sum() > 0  # straight-through: the soft assignment's gradient


def test_first_reading_centres_collapse_and_choosing_reading_spreads():
    # The first reading's centres (randn * d^-0.5, assigned mean, tau 1) all sit near the frame mean:
    # their spread is a small fraction of the pixels' spread. Unit centres and the printed update keep theirs.
    torch.manual_seed(3)
    d, n = 32, 200
    visual = torch.randn(1, n, d)
    old = DynamicElimination(d, 5, centre_update="assigned_mean", centre_init="scaled").eval()
    keys = old.norm_visual(visual)
    o = torch.softmax(keys @ old.centres.t(), -1)[0]
    centres = (o.t() @ keys[0]) / o.sum(0)[:, None]
    pixel_spread = torch.pdist(keys[0]).mean()
    assert torch.pdist(centres).mean() < 0.35 * pixel_spread
    new = DynamicElimination(d, 5, centre_update="printed", centre_init="unit")
    assert torch.pdist(new.centres.detach()).mean() > 0.7 * pixel_spread


def test_log_bias_model_keeps_tokens_and_scale_model_scales_them():
    torch.manual_seed(4)
    image, audio = torch.randn(2, 3, 64, 64), torch.randn(2, 16)
    choosing = build_model("ddeseg", memory=small_memory()).eval()
    first = build_model("ddeseg", memory=small_memory(), **FIRST_READING).eval()
    assert any(n.endswith("cross_attn.null_key") for n, _ in choosing.named_parameters())
    assert not any("null_key" in n for n, _ in first.named_parameters())
    with torch.no_grad():
        out_c, out_f = choosing(image, audio), first(image, audio)
    assert all(torch.equal(t, out_c.tokens[0]) for t in out_c.tokens)  # removed in fusion, not scaled
    torch.testing.assert_close(out_f.tokens[3], out_f.tokens[0] * out_f.scores[..., None])  # Eq. 17, cumulative


# ----------------------------------------------------------------------------- fusion attention
def _attention_numpy(layer, visual, audio, bias, null):
    d = visual.shape[-1]
    w_q, w_k, w_v = np.split(to_numpy(layer.attn.in_proj_weight), 3)
    b_q, b_k, b_v = np.split(to_numpy(layer.attn.in_proj_bias), 3)
    q, k, v = visual @ w_q.T + b_q, audio @ w_k.T + b_k, audio @ w_v.T + b_v
    logits = q @ k.T / np.sqrt(d) + bias[None, :]
    if null is not None:
        logits = np.concatenate([logits, (q @ null / np.sqrt(d))[:, None]], 1)
        v = np.concatenate([v, np.zeros((1, d))], 0)  # the null key's value is 0
    weights = softmax(logits)
    return weights @ v @ to_numpy(layer.attn.out_proj.weight).T + to_numpy(layer.attn.out_proj.bias), weights


def test_log_bias_and_null_key_against_numpy():
    torch.manual_seed(5)
    layer = AudioCrossAttention(6, 1, null_key=True).double()
    with torch.no_grad():
        layer.null_key.normal_()
    visual, audio = torch.randn(1, 7, 6, dtype=torch.float64), torch.randn(1, 3, 6, dtype=torch.float64)
    bias = torch.tensor([[0.0, -1.5, 0.7]], dtype=torch.float64)
    out, weights = layer(visual, audio, bias)
    expected, w = _attention_numpy(layer, to_numpy(visual[0]), to_numpy(audio[0]), to_numpy(bias[0]), to_numpy(layer.null_key))
    np.testing.assert_allclose(to_numpy(out[0]), expected, atol=1e-10)
    np.testing.assert_allclose(to_numpy(weights[0]), w[:, :3], atol=1e-10)


def test_minus_infinite_log_bias_with_a_null_key_removes_the_token():
    torch.manual_seed(6)
    layer = AudioCrossAttention(8, 2, null_key=True)
    visual, audio = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    out, weights = layer(visual, audio, torch.tensor([[0.0, -float("inf"), 0.0]] * 2))
    assert torch.equal(weights[..., 1], torch.zeros(2, 5))  # no attention mass on the eliminated token
    # the output does not depend on the eliminated token at all
    moved = audio.clone()
    moved[:, 1] += 100
    torch.testing.assert_close(layer(visual, moved, torch.tensor([[0.0, -float("inf"), 0.0]] * 2))[0], out)
    # every token eliminated: all the mass goes to the null key, whose value is 0
    out_none, weights_none = layer(visual, audio, torch.full((2, 3), -float("inf")))
    assert torch.equal(weights_none, torch.zeros(2, 5, 3)) and torch.isfinite(out_none).all()
    torch.testing.assert_close(out_none, layer.attn.out_proj.bias.expand_as(out_none))


def test_without_bias_and_null_key_fusion_attention_is_the_multihead_call():
    torch.manual_seed(7)
    plain, manual = AudioCrossAttention(8, 2), AudioCrossAttention(8, 2)
    manual.load_state_dict(plain.state_dict())  # same parameter names as before issue 13
    visual, audio = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    out, weights = plain(visual, audio)
    out_zero_bias, weights_zero_bias = manual(visual, audio, torch.zeros(2, 3))  # the explicit path
    torch.testing.assert_close(out_zero_bias, out)
    torch.testing.assert_close(weights_zero_bias, weights)


def _audio_query_numpy(layer, visual, audio, bias, null, heads):
    """Sec. 3.3 as printed, one frame, head by head: each token's softmax over the cells (and a null
    cell), then W = 1 - exp(-N P) times S = exp(bias) writes the token's value into the cells; the
    heads' outputs are concatenated. Returns (output [N, C], head-mean W [N, K])."""
    n, d = visual.shape
    w_q, w_k, w_v = np.split(to_numpy(layer.attn.in_proj_weight), 3)
    b_q, b_k, b_v = np.split(to_numpy(layer.attn.in_proj_bias), 3)
    q, k, v = audio @ w_q.T + b_q, visual @ w_k.T + b_k, audio @ w_v.T + b_v
    dh, outs, maps = d // heads, [], []
    for h in range(heads):
        part = slice(h * dh, (h + 1) * dh)
        logits = q[:, part] @ k[:, part].T / np.sqrt(dh)  # [K, N]
        if null is not None:
            logits = np.concatenate([logits, (q[:, part] @ null[part] / np.sqrt(dh))[:, None]], 1)
        weights = (1 - np.exp(-n * softmax(logits)[:, :n])) * np.exp(bias)[:, None]  # [K, N]
        outs.append(weights.T @ v[:, part])
        maps.append(weights.T)
    out = np.concatenate(outs, 1) @ to_numpy(layer.attn.out_proj.weight).T + to_numpy(layer.attn.out_proj.bias)
    return out, np.mean(maps, 0)


def test_audio_queries_against_numpy():
    torch.manual_seed(8)
    layer = AudioCrossAttention(6, 2, null_key=True, query="audio").double()
    with torch.no_grad():
        layer.null_key.normal_()
    visual, audio = torch.randn(2, 7, 6, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    bias = torch.tensor([[0.0, -1.5, 0.7], [-0.3, 0.0, -4.0]], dtype=torch.float64)
    out, weights = layer(visual, audio, bias)
    for i in range(2):
        expected, w = _audio_query_numpy(layer, to_numpy(visual[i]), to_numpy(audio[i]), to_numpy(bias[i]),
                                         to_numpy(layer.null_key), heads=2)
        np.testing.assert_allclose(to_numpy(out[i]), expected, atol=1e-10)
        np.testing.assert_allclose(to_numpy(weights[i]), w, atol=1e-10)


def test_audio_queries_choose_where_each_token_writes():
    layer = AudioCrossAttention(4, 1, query="audio")
    with torch.no_grad():  # queries and keys are the inputs themselves, scaled up: a token finds its own cell
        w_q, w_k, _ = layer.attn.in_proj_weight.chunk(3)
        w_q.copy_(10 * torch.eye(4)), w_k.copy_(10 * torch.eye(4))
        layer.attn.in_proj_bias.zero_()
    visual = torch.eye(4)[None, :, :].repeat(1, 2, 1)  # 8 cells: the 4 one-hot directions twice
    audio = torch.eye(4)[None, [2, 0]]  # token 0 matches cells 2 and 6, token 1 cells 0 and 4
    _, weights = layer(visual, audio)  # [1, 8, 2]
    weights = weights.detach()
    assert set(weights[0, :, 0].topk(2).indices.tolist()) == {2, 6}
    assert set(weights[0, :, 1].topk(2).indices.tolist()) == {0, 4}
    assert weights.min() >= 0 and weights.max() < 1
    assert float(weights[0, 2, 0]) > 0.95 and float(weights[0, 1, 0]) < 0.05
    # a token of zero score (S = 0) writes nothing: its content no longer reaches the output
    bias = torch.tensor([[0.0, -float("inf")]])
    out, masked = layer(visual, audio, bias)
    assert torch.equal(masked[..., 1], torch.zeros(1, 8))
    torch.testing.assert_close(layer(visual, audio * torch.tensor([[[1.0], [5.0]]]), bias)[0], out)


def test_audio_queries_commute_with_the_order_of_the_cells():
    torch.manual_seed(9)
    layer = AudioCrossAttention(8, 2, null_key=True, query="audio")
    visual, audio = torch.randn(2, 10, 8), torch.randn(2, 3, 8)
    order = torch.randperm(10)
    out, weights = layer(visual, audio)
    out_permuted, weights_permuted = layer(visual[:, order], audio)
    torch.testing.assert_close(out_permuted, out[:, order])
    torch.testing.assert_close(weights_permuted, weights[:, order])


def test_fusion_query_is_a_checked_switch():
    with pytest.raises(ValueError, match="query"):
        AudioCrossAttention(8, 1, query="sideways")
    with pytest.raises(ValueError, match="fusion_query='sideways'"):
        build_model("ddeseg", size="tiny", memory_classes=4, k=2, m=2, fusion_query="sideways")
    with pytest.raises(ValueError, match="released"):  # its blocks have no audio cross-attention to turn
        build_model("ddeseg", size="tiny", variant="released", memory_classes=4, k=2, m=2, fusion_query="audio")
    model = build_model("ddeseg", size="tiny", memory_classes=4, k=2, m=2, num_tokens=3, fusion_query="audio")
    assert all(b.cross_attn.query == "audio" for i in range(1, 5) for b in model.stage_blocks(i))


# ----------------------------------------------------------------------------- analyses and the capacity check
def test_within_frame_auc_on_a_hand_made_case():
    scores = np.array([[0.9, 0.2, 0.5], [0.1, 0.3, 0.0], [0.4, 0.4, 0.0], [0.8, 0.7, 0.6]])
    labels = np.array([[1, 0, 0], [1, 0, -1], [1, 0, -1], [1, 1, 1]])  # frame 4 has no negative: left out
    result = within_frame_auc(scores, labels, ["a", "b", "c", "d"], boot=200)
    # wins: frame 1 2 of 2, frame 2 0 of 1, frame 3 a tie (0.5 of 1) -> 2.5 / 4
    assert result["auc"] == pytest.approx(0.625)
    assert (result["frames"], result["pairs"], result["clips"]) == (3, 4, 3)
    low, high = result["ci95"]
    assert 0 <= low <= 0.625 <= high <= 1 and low < high
    one_clip = within_frame_auc(scores, labels, ["a"] * 4, boot=50)
    assert one_clip["ci95"] == [pytest.approx(0.625), pytest.approx(0.625)]  # one clip: nothing to resample


def test_a_per_frame_gate_is_at_chance_within_frames():
    # constant scores within each frame: the pooled AUC can be perfect, the within-frame AUC is 0.5
    scores = np.array([[0.9, 0.9], [0.1, 0.1], [0.9, 0.9], [0.1, 0.1]])
    labels = np.array([[1, 0], [0, 0], [1, 1], [0, 0]])
    assert within_frame_auc(scores, labels, ["a", "b", "c", "d"])["auc"] == 0.5
    assert score_spread(torch.tensor(scores))["std"] == 0 and score_spread(torch.tensor(scores))["log_std"] == 0


def test_token_separation_by_hand():
    # frame 0: tokens (0,0), (3,4), (0,8); frame 1: three copies of (6,8)
    tokens = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [0.0, 8.0]], [[6.0, 8.0]] * 3])
    result = separation_of_tokens(tokens)
    assert result["within_frame"] == pytest.approx((5 + 8 + 5 + 0 + 0 + 0) / 6)  # pairs of frame 0, then frame 1
    assert result["norm"] == pytest.approx((0 + 5 + 8 + 10 * 3) / 6)
    mean0 = np.array([1.0, 4.0])
    assert result["between_frames"] == pytest.approx(np.linalg.norm(mean0 - [6.0, 8.0]))
    assert result["ratio"] == pytest.approx(result["within_frame"] / result["between_frames"])
    # cosines: frame 0's zero token has none with anything (0), (3,4)·(0,8) = 32 / 40; frame 1 all 1
    assert result["cosine"] == pytest.approx((0 + 0 + 0.8 + 1 + 1 + 1) / 6)
    same = separation_of_tokens(tokens[1:].repeat(2, 1, 1))  # identical tokens: nothing apart
    assert same["within_frame"] == 0 and same["between_frames"] == 0

def test_capacity_loss_is_the_binary_cross_entropy_of_the_token_classes():
    scores = [torch.tensor([[0.9, 0.2]]), torch.tensor([[0.6, 0.5]])]
    classes = torch.tensor([[2, 0]])
    onscreen = torch.tensor([[0.0, 0.0, 1.0]])  # class 2 on screen, class 0 not
    per_stage = [-(np.log(0.9) + np.log(1 - 0.2)) / 2, -(np.log(0.6) + np.log(1 - 0.5)) / 2]
    assert capacity_loss(scores, classes, onscreen).item() == pytest.approx(np.mean(per_stage), rel=1e-5)


# ----------------------------------------------------------------------------- the ablation's statistics and its run
def test_paired_differences_and_intervals():
    import pandas as pd
    from scipy import stats

    from avs_lib.experiments.ablation import interval_table, plan

    table = pd.DataFrame({"setting": ["baseline"] * 3 + ["full"] * 3, "seed": [0, 1, 2] * 2,
                          "JF": [0.40, 0.50, 0.45, 0.42, 0.53, 0.46]})
    rows = interval_table(table).set_index("setting")
    diffs = np.array([0.02, 0.03, 0.01])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert rows.loc["full", "diff"] == pytest.approx(0.02) and rows.loc["full", "pairs"] == 3
    assert rows.loc["full", "diff_low"] == pytest.approx(0.02 - half)
    # the paired interval is far narrower than the unpaired spread of the seeds
    assert rows.loc["full", "diff_high"] - rows.loc["full", "diff_low"] < rows.loc["full", "high"] - rows.loc["full", "low"]
    jobs = plan(seeds=range(5), table4_seeds=range(3))
    assert sum(s == "full" for s, _ in jobs) == 5 and sum(s == "FC+sigmoid" for s, _ in jobs) == 3
    # floor and ceiling; Table 3 + released + AVSAC; 3 own Table 4 rows, first reading; the two capacity checks once
    assert len(jobs) == 2 * 5 + 6 * 5 + 4 * 3 + 2
    assert {s for s, _ in plan(seeds=range(2), table4_seeds=range(1), settings=["full"])} == {
        "floor: zero audio", "ceiling: oracle audio", "baseline", "full"}  # the window is always measured


def test_avsac_row_starts_from_the_backbone_of_the_ddeseg_rows(tmp_path):
    from avs_lib.core.config import load_config
    from avs_lib.experiments.ablation import setting_config

    base = load_config("configs/tiny_world.yaml", ["switches.tau=0.5"])
    avsac = setting_config(base, "avsac", 1, tmp_path / "avsac_seed1")
    full = setting_config(base, "full", 1, tmp_path / "full_seed1")
    assert avsac.model == "avsac" and avsac.seed == 1
    assert avsac.switches == {"backbone": "efficientnet_lite0", "pretrained_backbone": "world"}
    assert full.switches["tau"] == 0.5 and full.switches["backbone"] == avsac.switches["backbone"]


def test_every_row_takes_the_next_test_beds_switches(tmp_path):
    # the GPU script's SWITCHES (scripts/gpu_ablation/run_on_gpu.sh): the released row has no fusion
    # attention to read, AVSAC no DDESeg decoder; every other row carries both switches
    from avs_lib.core.config import load_config
    from avs_lib.experiments.ablation import SETTINGS, setting_config

    base = load_config("configs/tiny_world.yaml", ["switches.fusion_query=audio", "switches.decoder_stride=2",
                                                   "switches.pretrained_backbone=true"])
    for setting in SETTINGS:
        config = setting_config(base, setting, 0, tmp_path / "run")
        if config.model == "avsac":
            assert "fusion_query" not in config.switches and "decoder_stride" not in config.switches
        elif config.variant == "released":
            assert "fusion_query" not in config.switches and config.switches["decoder_stride"] == 2
        else:
            assert config.switches["fusion_query"] == "audio" and config.switches["decoder_stride"] == 2
    from avs_lib.models import build_model

    released = setting_config(base, "full (released)", 0, tmp_path / "run")
    model = build_model("ddeseg", variant="released", audio_dim=16, memory_classes=8, **released.switches)
    assert model.config.decoder_stride == 2 and model.config.fusion_query == "visual"


def test_a_run_whose_setting_changed_is_refused_or_set_aside(tmp_path):
    import json
    from dataclasses import asdict, replace

    from avs_lib.core.config import load_config
    from avs_lib.experiments.ablation import run_dir_name, runs_to_train, setting_config

    base = load_config("configs/tiny_world.yaml", [])
    jobs = [("baseline", 0), ("avsac", 0), ("full", 0)]
    for setting, seed in jobs[:2]:  # two finished runs, AVSAC's recorded before it took the backbone switches
        run_dir = tmp_path / run_dir_name(setting, seed)
        run_dir.mkdir()
        config = setting_config(base, setting, seed, run_dir)
        if setting == "avsac":
            config = replace(config, switches={})
        else:  # finished on a GPU: still the same run here (the device is not part of what a run computes)
            config = replace(config, device="cuda")
        (run_dir / "config.json").write_text(json.dumps(asdict(config)))
        (run_dir / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="avsac_seed0 holds a run with other settings.*set-aside-changed"):
        runs_to_train(tmp_path, base, jobs)
    assert (tmp_path / "avsac_seed0" / "metrics.json").exists()  # refused: nothing moved
    assert runs_to_train(tmp_path, base, jobs, set_aside_changed=True) == [("avsac", 0), ("full", 0)]
    assert not (tmp_path / "avsac_seed0").exists()
    [aside] = (tmp_path / "superseded").iterdir()
    assert aside.name.startswith("avsac_seed0-") and (aside / "metrics.json").exists()
    assert (tmp_path / "baseline_seed0" / "metrics.json").exists()  # the unchanged run stays, finished


def test_the_report_says_where_reused_runs_trained():
    from avs_lib.experiments.ablation import devices_text

    assert devices_text({"full seed 0": "cpu", "full seed 1": "cpu"}) == "cpu"
    text = devices_text({"full seed 0": "cuda", "full seed 1": "cuda", "avsac seed 0": "cpu", "avsac seed 1": "cpu",
                         "baseline seed 0": "cuda"})
    assert text == "cuda (3 runs) and cpu (2 runs: avsac seed 0, avsac seed 1)"


def test_run_ablation_writes_every_row_with_intervals(notebook_world, tmp_path):
    from avs_lib.core.config import load_config
    from avs_lib.experiments.ablation import CAPACITY, POINTING, run_ablation

    config = load_config(None, [f"data_root={notebook_world}", "image_size=32", "epochs=1", "encoder_epochs=1",
                                "device=cpu", f"cache_dir={tmp_path / 'cache'}", "progress=false"])
    run_ablation(tmp_path / "runs", config, seeds=(0, 1), table4_seeds=(0,), settings=["full", "full (released)", CAPACITY,
                                                                                   POINTING],
                 figure=tmp_path / "report" / "ablation.png", report_dir=tmp_path / "report", progress=False)
    text = (tmp_path / "report" / "ablation.md").read_text()
    assert "below the 100" in text  # the small world is flagged as too small to rank settings
    for row in ("| baseline | 2 |", "| full | 2 |", "| full (released) | 2 |", f"| {CAPACITY} | 1 |", f"| {POINTING} | 1 |", "pairs)",
                "| floor: zero audio | 2 |", "| ceiling: oracle audio | 2 |", "**The window**"):
        assert row in text, row
    assert "training frames, trained on cpu." in text
    analyses = json.loads((tmp_path / "report" / "analyses.json").read_text())
    assert set(analyses["trained_on"].values()) == {"cpu"} and "full seed 1" in analyses["trained_on"]
    run = analyses["elimination"]["full"][0]["stages"]
    assert set(run) == {"stage 2", "stage 3", "stage 4", "combined"}
    assert set(analyses["elimination"]["full (released)"][0]["stages"]) == {"stage 1", "stage 2", "stage 3", "stage 4",
                                                                           "combined"}
    assert run["combined"]["within_frame"]["pairs"] > 0 and (tmp_path / "report" / "ablation.png").stat().st_size > 1000
    separation = analyses["token_separation"]
    assert set(separation) == {"full", "full (released)", CAPACITY, POINTING} and len(separation["full"]) == 2
    assert all(0 <= r[kind]["within_frame"] and 0 < r[kind]["between_frames"] for runs in separation.values()
               for r in runs for kind in ("derived", "enhanced"))
    assert "Read again" not in text and analyses["batchnorm_recomputed"] == []
    # a run read again by avs reread-bn (its first reading kept in metrics.json) is named in the report
    metrics_path = tmp_path / "runs" / "full_seed1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps({**metrics, "batchnorm_recomputed": {"test_as_trained": metrics["test"]}}))
    run_ablation(tmp_path / "runs", config, seeds=(0, 1), table4_seeds=(0,), settings=["full", "full (released)", CAPACITY,
                                                                                   POINTING],
                 report_dir=tmp_path / "report", progress=False)
    assert "**Read again**: 1 of the " in (tmp_path / "report" / "ablation.md").read_text()
    assert json.loads((tmp_path / "report" / "analyses.json").read_text())["batchnorm_recomputed"] == ["full seed 1"]
    assert "How far apart a frame's derived tokens are" in text and "| full | 2 | enhanced |" in text


def test_parallel_ablation_reports_what_finished_and_continues(notebook_world, tmp_path, monkeypatch):
    """Two runs at once in spawned processes; a worker killed mid-run and a time budget that has run out
    leave a report over the finished runs that names the others, and the same call continues them."""
    from avs_lib.core.config import load_config
    from avs_lib.experiments.ablation import AblationRunsFailed, run_ablation

    config = load_config(None, [f"data_root={notebook_world}", "image_size=32", "epochs=1", "encoder_epochs=1",
                                "device=cpu", f"cache_dir={tmp_path / 'cache'}", "progress=false"])
    runs, report = tmp_path / "runs", tmp_path / "report"
    kwargs = dict(table4_seeds=(0,), settings=["+derivation"], report_dir=report, progress=False, parallel=2)
    # every run's first step kills its worker process once (a marker in the run folder spares the rerun)
    monkeypatch.setenv("AVS_FAULT_KILL", "1:0")
    with pytest.raises(AblationRunsFailed, match="worker process"):
        run_ablation(runs, config, seeds=(0,), **kwargs)
    text = (report / "ablation.md").read_text()
    assert "**Not run:" in text and "+derivation seed 0" in text
    monkeypatch.delenv("AVS_FAULT_KILL")
    run_ablation(runs, config, seeds=(0,), **kwargs)
    text = (report / "ablation.md").read_text()
    assert "Not run" not in text and "| +derivation | 1 |" in text and "| ceiling: oracle audio | 1 |" in text
    # no row of these sections was asked for: no empty section
    assert "## Other readings" not in text and "## Table 4" not in text
    # the per-run analyses were taken in the worker and are what the report used
    cached = json.loads((runs / "derivation_seed0" / "analyses.json").read_text())
    analyses = json.loads((report / "analyses.json").read_text())
    assert analyses["token_separation"]["+derivation"][0] == cached["separation"] and analyses["parallel"] == 2
    assert analyses["workers_shared_data"]  # the workers were handed the parent's frames, not left to decode them
    # a budget already spent: seed 1's four runs do not start, seed 0's rows stay in the report
    run_ablation(runs, config, seeds=(0, 1), time_budget=0, **kwargs)
    text = (report / "ablation.md").read_text()
    assert "**Not run: 4 of the 8 planned runs**" in text and "baseline seed 1" in text
    assert "| baseline | 1 |" in text and not (runs / "baseline_seed1" / "metrics.json").exists()
