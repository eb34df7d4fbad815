"""Named activations: run_with_cache returns what the model computes; hooks change what they touch."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avs_lib.data.transforms import normalise_images
from avs_lib.models import build_model, hook_names, run_with_cache, run_with_hooks
from avs_lib.models.ddeseg import FIRST_READING


def _model(name="ddeseg", **switches):
    torch.manual_seed(0)
    model = build_model(name, audio_dim=16, **({} if name == "avsac" else {"memory_classes": 8}), **switches).eval()
    if getattr(model, "derivation", None) is not None:
        model.derivation.centroids.normal_()
        model.derivation.features.normal_()
    return model


def _frames(n=5, size=64, dim=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                           audio=torch.randn(n, dim, generator=g))


def _forward(model, frames):
    with torch.no_grad():
        return model(normalise_images(frames.images), frames.audio)


@pytest.mark.parametrize("switches", [{}, {"variant": "released"}, {"name": "baseline"}, FIRST_READING,
                                      {"backbone": "efficientnet_lite0"}])
def test_cache_equals_the_models_outputs(switches):
    switches = dict(switches)
    model = _model(switches.pop("name", "ddeseg"), **switches)
    frames = _frames()
    out = _forward(model, frames)
    cache = run_with_cache(model, frames, batch_size=2)  # batches of 2, 2, 1: concatenated in frame order
    assert set(cache) == set(hook_names(model))
    torch.testing.assert_close(cache["logits"], out.logits, atol=1e-5, rtol=1e-5)
    for stage in range(1, 5):
        torch.testing.assert_close(cache[f"stage{stage}.features"], out.features[stage - 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache[f"stage{stage}.audio"], out.tokens[stage - 1], atol=1e-6, rtol=1e-6)
    if out.derivation is not None:
        assert torch.equal(cache["derivation.classes"], out.derivation.class_indices)
        torch.testing.assert_close(cache["derivation.tokens"], out.derivation.tokens)
    for stage, scores in out.stage_scores.items():
        torch.testing.assert_close(cache[f"stage{stage}.elimination.scores"], scores, atol=1e-6, rtol=1e-5)
    if switches.get("variant") != "released":
        for stage in range(1, 5):
            pattern = cache[f"stage{stage}.block0.cross_attn.pattern"]  # [N, heads, HW, K]
            h, w = cache.hw(stage)
            assert pattern.shape[0] == 5 and pattern.shape[2] == h * w
            assert pattern.shape[3] == out.tokens[stage - 1].shape[1]
            # the blocks return the head mean; the cache keeps every head
            torch.testing.assert_close(pattern.mean(1), out.attention[stage - 1], atol=1e-6, rtol=1e-5)


def test_avsac_cache_equals_its_outputs():
    model = _model("avsac")
    frames = _frames()
    out = _forward(model, frames)
    cache = run_with_cache(model, frames, names=["logits", "layer5.agv", "layer5.vga", "layer*.audio_to_vision.pattern"])
    torch.testing.assert_close(cache["logits"], out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["layer5.agv"], out.agv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["layer5.vga"], out.vga, atol=1e-5, rtol=1e-5)
    patterns = [n for n in cache if n.endswith("audio_to_vision.pattern")]
    assert len(patterns) == model.config.layers
    rows = cache[patterns[0]].sum(-1)  # a softmax over the queries: each visual token's row sums to 1
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)


def test_reading_hooks_change_nothing_and_are_removed():
    model = _model()
    frames = _frames()
    before = _forward(model, frames).logits
    seen = []
    with run_with_hooks(model, {"stage*.visual": lambda v: seen.append(v.shape)}):
        during = _forward(model, frames).logits
    assert torch.equal(during, before) and len(seen) == 4
    assert all(not p._forward_hooks for p in model.modules() if hasattr(p, "active"))
    with pytest.raises(RuntimeError):
        with run_with_hooks(model, {"logits": lambda v: v}):
            raise RuntimeError("inside")
    assert all(not p._forward_hooks for p in model.modules() if hasattr(p, "active"))


@pytest.mark.parametrize("switches", [{}, FIRST_READING])
def test_zeroing_a_token_changes_the_output(switches):
    model = _model(**switches)
    frames = _frames()
    before = _forward(model, frames).logits

    def zero_first(tokens):
        tokens = tokens.clone()
        tokens[:, 0] = 0
        return tokens

    with run_with_hooks(model, {"derivation.tokens": zero_first}):
        after = _forward(model, frames)
    assert (after.logits - before).abs().max() > 1e-4
    assert torch.equal(after.tokens[0][:, 0], torch.zeros_like(after.tokens[0][:, 0]))


@pytest.mark.parametrize("switches", [{}, FIRST_READING, {"fusion_query": "audio"}])
def test_a_replaced_attention_pattern_reaches_the_output(switches):
    # FIRST_READING's fusion has no null key and no bias: nn.MultiheadAttention's path, which the
    # hook must replace by the explicit one for the intervention to act
    model = _model(**switches)
    frames = _frames()
    before = _forward(model, frames).logits

    def only_token_0(pattern):
        replaced = torch.zeros_like(pattern)
        replaced[..., 0] = 1
        return replaced

    with run_with_hooks(model, {"stage1.block0.cross_attn.pattern": only_token_0}):
        cache = run_with_cache(model, frames, names=["stage1.block0.cross_attn.pattern", "logits"])
    assert torch.equal(cache["stage1.block0.cross_attn.pattern"][..., 0],
                       torch.ones_like(cache["stage1.block0.cross_attn.pattern"][..., 0]))
    assert (cache["logits"] - before).abs().max() > 1e-4


@pytest.mark.parametrize("query", ["visual", "audio"])
def test_zeroed_fusion_attention_leaves_a_model_that_does_not_hear(query):
    # DDESeg's audio reaches the masks through the fusion attention alone, in either reading
    model, frames = _model(fusion_query=query), _frames()
    silent = SimpleNamespace(images=frames.images, audio=torch.zeros_like(frames.audio))
    heard = _forward(model, frames).logits
    assert (_forward(model, silent).logits - heard).abs().max() > 1e-4  # as built, the audio counts
    with run_with_hooks(model, {"stage*.block*.cross_attn.pattern": torch.zeros_like}):
        torch.testing.assert_close(_forward(model, silent).logits, _forward(model, frames).logits)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 2), st.integers(1, 6), st.integers(1, 4), st.integers(0, 10_000))
def test_spreading_attention_keeps_each_tokens_share_and_drops_its_place(b, heads, n, k, seed):
    from avs_lib.analysis.evaluation import spread_over_frame

    pattern = torch.rand(b, heads, n, k, generator=torch.Generator().manual_seed(seed))
    spread = spread_over_frame(pattern)
    assert spread.shape == pattern.shape
    assert torch.allclose(spread, spread[:, :, :1].expand_as(spread))  # the same at every cell
    assert torch.allclose(spread.mean(2), pattern.mean(2))  # each token's mean weight kept


@pytest.mark.parametrize("switches", [{}, {"backbone": "efficientnet_lite0"}])
def test_spread_attention_reaches_the_output(switches):
    from avs_lib.analysis.evaluation import ATTENTION_INTERVENTIONS

    model = _model(**switches)
    frames = _frames()
    before = _forward(model, frames).logits
    for name, edit in ATTENTION_INTERVENTIONS.items():
        if edit is None:
            continue
        with run_with_hooks(model, {"stage*.block*.cross_attn.pattern": edit}):
            cache = run_with_cache(model, frames, names=["stage1.block0.cross_attn.pattern", "logits"])
        pattern = cache["stage1.block0.cross_attn.pattern"]
        assert torch.allclose(pattern, pattern[:, :, :1].expand_as(pattern)), name
        assert (cache["logits"] - before).abs().max() > 1e-4, name


def test_attention_interventions_refuse_a_model_without_fusion_attention():
    from avs_lib.analysis.evaluation import attention_interventions

    with pytest.raises(ValueError, match="no fusion cross-attention"):
        attention_interventions(_model(variant="released"), _frames(), config=None)


def test_scaling_the_assignment_logits_is_changing_tau():
    # Eq. 13 divides V C_v^T by tau: a hook that multiplies the logits by tau / tau' must give what
    # a model built with tau' gives
    model, other = _model(tau=1.0), _model(tau=0.25)
    other.load_state_dict(model.state_dict())
    frames = _frames()
    with run_with_hooks(model, {"stage*.elimination.logits": lambda logits: logits * (1.0 / 0.25)}):
        hooked = _forward(model, frames)
    reference = _forward(other, frames)
    torch.testing.assert_close(hooked.logits, reference.logits, atol=1e-5, rtol=1e-5)
    assert (hooked.logits - _forward(model, frames).logits).abs().max() > 1e-5


def test_names_state_dict_and_errors():
    model = _model()
    names = hook_names(model)
    assert names[0] == "audio.input" and names[-1] == "logits"
    assert names.index("stage1.features") < names.index("stage2.visual") < names.index("stage2.elimination.scores")
    assert names.index("derivation.tokens") < names.index("stage1.visual")
    assert not [key for key in model.state_dict() if "hook" in key]  # hook points hold nothing
    with pytest.raises(KeyError, match="stage2.elimination.scores"):
        run_with_cache(model, _frames(), names=["stage2.elimination.score"])


def test_hook_names_filtered_by_a_glob():
    model = _model()
    every = hook_names(model)
    fusion = hook_names(model, "stage*.block*.cross_attn.pattern")
    assert fusion and all(n.startswith("stage") and n.endswith(".cross_attn.pattern") for n in fusion)
    assert fusion == [n for n in every if n in set(fusion)]  # the forward order is kept
    assert hook_names(model, "logits") == ["logits"]
    assert hook_names(model, "no.such.point") == []
    assert hook_names(_model(variant="released"), "stage*.block*.cross_attn.pattern") == []


def test_cache_of_chosen_frames_and_zero_audio():
    model = _model()
    frames = _frames(n=6)
    cache = run_with_cache(model, frames, names=["audio.input", "logits"], indices=[4, 1], zero_audio=True)
    assert torch.equal(cache["audio.input"], torch.zeros(2, 16))
    with torch.no_grad():
        reference = model(normalise_images(frames.images[[4, 1]]), torch.zeros(2, 16)).logits
    torch.testing.assert_close(cache["logits"], reference, atol=1e-5, rtol=1e-5)


def test_derivation_at_another_k_is_an_argument_not_a_mutation():
    model = _model()
    audio = _frames().audio
    with torch.no_grad():
        at_three = model.derivation(audio, num_tokens=3)
    assert model.derivation.num_tokens == 5 and at_three.tokens.shape[1] == 3
    other = _model(num_tokens=3)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference = other.derivation(audio)
    torch.testing.assert_close(at_three.tokens, reference.tokens)
    with pytest.raises(ValueError, match="between 1 and"):
        model.derivation(audio, num_tokens=9)


def _frames_with_boxes(n=4, size=64, dim=16):
    """Frames of a 64 px world: a silent object's box over the top-left quarter, a sounding object
    (its mask its whole box) over the 16 x 16 px at the bottom right."""
    from avs_lib.data.frames import FrameSet

    plain = _frames(n, size, dim)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    masks[:, 48:, 48:] = 1
    sources = {"c": {"sources": [
        {"class_index": 1, "sounding": False, "on_screen": True, "bboxes": [[0, 0, 32, 32]] * n},
        {"class_index": 2, "sounding": True, "on_screen": True, "bboxes": [[48, 48, 64, 64]] * n}]}}
    return FrameSet(plain.images, masks, torch.ones(n, dtype=torch.bool), plain.audio, ["c"] * n, list(range(n)),
                    ["x"] * n, sources)


def test_blanking_takes_the_attention_away_from_the_cells_of_each_place():
    from avs_lib.analysis.evaluation import blanking_interventions
    from avs_lib.analysis.metrics import jf_with_interval

    model, frames = _model(), _frames_with_boxes()
    config = SimpleNamespace(bf16=False, zero_audio=False, cpu_bf16=False)
    rows = {r["intervention"]: r for r in blanking_interventions(model, frames, config, source_size=64, batch_size=3)}
    assert list(rows) == ["as trained", "silent boxes: blanked", "sounding boxes: blanked",
                          "background, as many cells as the silent boxes: blanked"]
    trained = jf_with_interval(_forward(model, frames).logits, frames.masks, frames.clips)
    assert rows["as trained"]["JF"] == pytest.approx(trained["JF"], abs=1e-6)
    assert rows["as trained"]["delta"] == 0 and rows["as trained"]["cells_blanked"] == 0
    # stage grids of a 64 px frame: 16, 8, 4 and 2 cells a side (340 cells). The silent box is a
    # quarter of every grid; the sounding box 1/16 of the first three, and no 2 x 2 cell is mostly inside it
    assert rows["silent boxes: blanked"]["cells_blanked"] == pytest.approx(85 / 340)
    assert rows["sounding boxes: blanked"]["cells_blanked"] == pytest.approx((16 + 4 + 1) / 340)
    # the control blanks as many background cells as the silent boxes have, where there are enough
    assert rows["background, as many cells as the silent boxes: blanked"]["cells_blanked"] == pytest.approx(85 / 340)
    for name, row in rows.items():
        assert row["delta"] == pytest.approx(row["JF"] - rows["as trained"]["JF"], abs=1e-9)
        if name != "as trained":  # taking the attention away reaches the masks
            assert row["JF"] != rows["as trained"]["JF"], name


def test_the_background_control_draws_the_same_cells_however_frames_are_batched():
    from avs_lib.analysis.evaluation import BLANKED_REGIONS, blanking_interventions

    model, frames = _model(), _frames_with_boxes(n=5)
    config = SimpleNamespace(bf16=False, zero_audio=False, cpu_bf16=False)
    control = (BLANKED_REGIONS[2],)
    one, five = (blanking_interventions(model, frames, config, source_size=64, batch_size=b, places=control)[1]
                 for b in (1, 5))
    assert one["cells_blanked"] == five["cells_blanked"]
    assert one["JF"] == pytest.approx(five["JF"], abs=1e-6)
    assert one["delta"] == pytest.approx(five["delta"], abs=1e-6)
    other_seed = blanking_interventions(model, frames, config, source_size=64, batch_size=5, places=control, seed=1)
    assert other_seed[1]["JF"] != pytest.approx(five["JF"], abs=1e-6)  # the draw is random, and seeded


def test_blanked_places_are_the_cells_mostly_inside_each_kind_of_place():
    from avs_lib.analysis.evaluation import _region_masks
    from avs_lib.analysis.truth import cells_inside

    frames = _frames_with_boxes(n=1)
    regions = _region_masks(frames, 0, source_size=64)
    assert int(regions["silent boxes"].sum()) == 32 * 32 and int(regions["sounding boxes"].sum()) == 16 * 16
    assert int(regions["background"].sum()) == 64 * 64 - 32 * 32 - 16 * 16
    silent = cells_inside(regions["silent boxes"][None], (8, 8)).reshape(8, 8)
    assert silent[:4, :4].all() and int(silent.sum()) == 16  # an 8 x 8 grid: the top-left 4 x 4 cells
    background = cells_inside(regions["background"][None], (2, 2)).reshape(2, 2)
    # 2 x 2 cells of 32 px: the top-left is the silent box, the bottom-right 3/4 background
    assert background.tolist() == [[False, True], [True, True]]


def test_blanking_figure_draws_a_bar_per_blanking(tmp_path):
    from avs_lib.viz.plots import blanking_figure

    errors = {"taken": 3, "silent": 10, "found": 8, "missed": 2}
    rows = [{"intervention": name, "delta": d, "delta_ci95": (d - 0.01, d + 0.01), "errors": errors}
            for name, d in (("as trained", 0.0), ("silent boxes: blanked", -0.05))]
    fig = blanking_figure(rows, tmp_path / "b.png")
    left, right = fig.axes
    assert [round(p.get_width(), 6) for p in left.patches] == [0.0, -5.0]  # points
    assert sorted(round(p.get_width(), 6) for p in right.patches) == [0.3, 0.3, 0.8, 0.8]
    assert (tmp_path / "b.png").stat().st_size > 0


def test_a_blanking_row_reads_in_points_and_counts():
    from avs_lib.analysis.evaluation import blanking_row_text

    row = {"intervention": "silent boxes: blanked", "JF": 0.3204, "delta": -0.432, "delta_ci95": (-0.446, -0.418),
           "errors": {"taken": 3038, "silent": 3863, "found": 1653, "missed": 536}, "cells_blanked": 0.1234}
    text = blanking_row_text(row, width=24)
    assert text.startswith("silent boxes: blanked    J&F 0.320")
    assert "delta -43.2 [-44.6, -41.8]" in text and "taken 3038/3863" in text and "found 1653/2189" in text
    assert text.endswith("cells 0.123")


def test_blanking_one_stage_touches_only_its_blocks():
    from avs_lib.analysis.evaluation import blanking_interventions

    model, frames = _model(), _frames_with_boxes()
    config = SimpleNamespace(bf16=False, zero_audio=False, cpu_bf16=False)
    rows = blanking_interventions(model, frames, config, source_size=64, batch_size=4,
                                  places=("silent boxes", "sounding boxes"), stages=(4,))
    assert [r["intervention"] for r in rows] == ["as trained", "silent boxes: blanked", "sounding boxes: blanked"]
    # stage 4's 2 x 2 grid: the silent box is one cell of four; no cell is mostly inside the
    # 16 px sounding box, so blanking it there leaves every prediction as it was
    assert rows[1]["cells_blanked"] == pytest.approx(1 / 4)
    assert rows[2]["cells_blanked"] == 0 and rows[2]["JF"] == rows[0]["JF"] and rows[2]["delta"] == 0
    with pytest.raises(ValueError, match="choose from"):
        blanking_interventions(model, frames, config, source_size=64, places=("the sky",))
    with pytest.raises(ValueError, match="no fusion blocks"):
        blanking_interventions(model, frames, config, source_size=64, stages=(7,))


def test_blanking_one_stage_at_a_time_gives_the_rows_of_one_call_per_stage():
    from avs_lib.analysis.evaluation import blanking_interventions

    model, frames = _model(), _frames_with_boxes()
    config = SimpleNamespace(bf16=False, zero_audio=False, cpu_bf16=False)
    places = ("silent boxes", "sounding boxes")
    rows = blanking_interventions(model, frames, config, source_size=64, batch_size=4, places=places,
                                  stages=(3, 4), one_stage_at_a_time=True)
    assert [r["intervention"] for r in rows] == [
        "as trained", "stage 3 only, silent boxes: blanked", "stage 3 only, sounding boxes: blanked",
        "stage 4 only, silent boxes: blanked", "stage 4 only, sounding boxes: blanked"]
    for stage, pair in ((3, rows[1:3]), (4, rows[3:5])):
        alone = blanking_interventions(model, frames, config, source_size=64, batch_size=4, places=places,
                                       stages=(stage,))
        assert alone[0]["JF"] == rows[0]["JF"]
        for mine, theirs in zip(pair, alone[1:]):
            assert mine["JF"] == theirs["JF"] and mine["delta"] == theirs["delta"]
            assert mine["cells_blanked"] == theirs["cells_blanked"] and mine["errors"] == theirs["errors"]
    # the 16 px sounding box is one cell of stage 3's 4 x 4 grid and mostly inside none of stage 4's 2 x 2
    assert rows[2]["cells_blanked"] == pytest.approx(1 / 16) and rows[4]["cells_blanked"] == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.integers(2, 12), st.integers(0, 10_000))
def test_moved_boxes_keep_their_size_on_the_background_where_there_is_room(h, w, seed):
    from avs_lib.analysis.evaluation import _moved_boxes

    background = torch.ones(32, 32, dtype=torch.bool)
    background[:12, :12] = False  # the silent object's own corner; the rest of the frame is free
    box = torch.zeros(32, 32, dtype=torch.bool)
    box[:h, :w] = True
    moved = _moved_boxes([box], background, torch.Generator().manual_seed(seed), tries=400)
    assert not (moved & ~background).any()  # never on an object
    assert int(moved.sum()) <= h * w
    rows, cols = moved.any(1).nonzero().flatten(), moved.any(0).nonzero().flatten()
    assert rows[-1] - rows[0] + 1 <= h and cols[-1] - cols[0] + 1 <= w  # one block, no larger than the box
    # 400 tries over a frame that is 86 % free find a window that is all background (or one very near)
    assert int(moved.sum()) >= 0.8 * h * w


def test_moved_boxes_do_not_overlap_each_other():
    from avs_lib.analysis.evaluation import _moved_boxes

    background = torch.ones(16, 16, dtype=torch.bool)
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[:8, :8] = True
    moved = _moved_boxes([box, box], background, torch.Generator().manual_seed(0), tries=400)
    # the second box goes where the first is not: boxes that could overlap would cover 64 px at best
    assert int(moved.sum()) >= 64 + 48
