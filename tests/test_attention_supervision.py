"""The attention supervision (outside the paper): which object sounds where, the grid labels, the loss
by hand, and a training run that carries it."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avs_lib.analysis.truth import UNKNOWN_OBJECT, object_class_map
from avs_lib.core.config import load_config
from avs_lib.training.losses import attention_supervision_loss, cell_labels


def _frame_with_two_objects():
    from avs_lib.data.frames import FrameSet

    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, 0:4, 0:4] = 1  # class 2's object, box (0, 0, 8, 8) in a 16 px world
    masks[0, 4:8, 4:8] = 1  # class 5's object, box (8, 8, 16, 16)
    masks[0, 7, 0] = 1  # a sounding pixel that no box covers
    sources = {"c": {"sources": [
        {"class_index": 2, "sounding": True, "on_screen": True, "bboxes": [[0, 0, 8, 8]]},
        {"class_index": 5, "sounding": True, "on_screen": True, "bboxes": [[8, 8, 16, 16]]},
        {"class_index": 3, "sounding": False, "on_screen": True, "bboxes": [[0, 8, 8, 16]]},  # silent
        {"class_index": 7, "sounding": True, "on_screen": False, "bboxes": None}]}}
    return FrameSet(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), masks, torch.ones(1, dtype=torch.bool),
                    torch.zeros(1, 4), ["c"], [0], ["x"], sources)


def test_object_class_map_names_each_sounding_object():
    frames = _frame_with_two_objects()
    labels = object_class_map(frames, 0, source_size=16)
    assert (labels[:4, :4] == 3).all() and (labels[4:, 4:] == 6).all()  # class + 1
    assert labels[7, 0] == UNKNOWN_OBJECT
    assert labels[4:7, :4].eq(0).all()  # the silent object is not in the mask: nothing sounds there
    assert torch.equal(labels > 0, frames.masks[0] > 0)


def test_pixels_two_boxes_claim_are_unknown():
    frames = _frame_with_two_objects()
    frames.sources["c"]["sources"][1]["bboxes"] = [[4, 4, 16, 16]]  # class 5's box now reaches into class 2's
    labels = object_class_map(frames, 0, source_size=16)
    assert (labels[2:4, 2:4] == UNKNOWN_OBJECT).all()  # sounding, in both boxes: whose is not known
    assert (labels[:2, :4] == 3).all() and (labels[4:, 4:] == 6).all()
    assert torch.equal(labels > 0, frames.masks[0] > 0)


def test_cell_labels_take_the_majority_or_nothing():
    maps = torch.zeros(1, 4, 4, dtype=torch.long)
    maps[0, :2, :2] = 3  # fills cell (0, 0)
    maps[0, :2, 2] = 6  # half of cell (0, 1): no majority
    maps[0, 2:, 2:] = 6
    maps[0, 3, 3] = 0  # 3 of 4 pixels of cell (1, 1) still class 5's
    assert cell_labels(maps, (2, 2)).tolist() == [[[3, -1], [0, 6]]]


def test_attention_supervision_loss_by_hand():
    maps = torch.zeros(1, 2, 2, dtype=torch.long)
    maps[0, 0, 0] = 3  # class 2: token 0
    maps[0, 1, 0] = 6  # class 5: no token, left out
    maps[0, 1, 1] = UNKNOWN_OBJECT  # left out
    classes = torch.tensor([[2, 9]])
    weights = torch.tensor([[[0.5, 0.2], [0.1, 0.3], [0.4, 0.4], [0.3, 0.3]]])  # [B, N=4, K=2]
    # cell 0: -log 0.5 (its own token); cell 1 (background): -log(1 - 0.4), the null key
    expected = (math.log(2) - math.log(0.6)) / 2
    loss = attention_supervision_loss([weights], [(2, 2)], classes, maps)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    without_null = attention_supervision_loss([weights], [(2, 2)], classes, maps, null_key=False)
    assert without_null.item() == pytest.approx(math.log(2), rel=1e-5)
    two_stages = attention_supervision_loss([weights, weights[:, :1]], [(2, 2), (1, 1)], classes, maps)
    # the 1 x 1 grid has no majority label (each covers a quarter of it): it counts nothing, loss 0
    assert two_stages.item() == pytest.approx(expected / 2, rel=1e-5)
    assert attention_supervision_loss([weights], [(2, 2)], classes, maps, valid=torch.tensor([False])).item() == 0


def test_two_tokens_of_one_class_share_the_target():
    maps = torch.full((1, 1, 1), 3, dtype=torch.long)
    weights = torch.tensor([[[0.25, 0.25, 0.5]]])
    loss = attention_supervision_loss([weights], [(1, 1)], torch.tensor([[2, 2, 4]]), maps)
    assert loss.item() == pytest.approx(math.log(4), rel=1e-5)  # -(1/2 log 1/4 + 1/2 log 1/4)


def test_audio_queries_write_back_loss_by_hand():
    maps = torch.zeros(1, 2, 2, dtype=torch.long)
    maps[0, 0, 0] = 3  # class 2: token 0's object
    maps[0, 1, 0] = 6  # class 5: no token; every token's target there is 0
    maps[0, 1, 1] = UNKNOWN_OBJECT  # left out
    classes = torch.tensor([[2, 9]])
    weights = torch.tensor([[[0.8, 0.1], [0.3, 0.5], [0.2, 0.4], [0.9, 0.9]]])  # [B, N=4, K=2]: W per token
    # one positive pair (cell 0, token 0); five negatives (cell 0 token 1, cells 1 and 2 both tokens)
    positive = -math.log(0.8)
    negative = -(math.log(0.9) + math.log(0.7) + math.log(0.5) + math.log(0.8) + math.log(0.6)) / 5
    loss = attention_supervision_loss([weights], [(2, 2)], classes, maps, queries="audio")
    assert loss.item() == pytest.approx((positive + negative) / 2, rel=1e-3)  # 1e-4 inside the logs
    # no token of an on-screen class: the negatives alone
    alone = attention_supervision_loss([weights], [(2, 2)], torch.tensor([[7, 9]]), maps, queries="audio")
    every = -(math.log(0.2) + math.log(0.9) + math.log(0.7) + math.log(0.5) + math.log(0.8) + math.log(0.6)) / 6
    assert alone.item() == pytest.approx(every, rel=1e-3)
    assert attention_supervision_loss([weights], [(2, 2)], classes, maps, valid=torch.tensor([False]),
                                      queries="audio").item() == 0
    with pytest.raises(ValueError, match="fusion_query"):
        attention_supervision_loss([weights], [(2, 2)], classes, maps, queries="both")


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 31 - 1))
def test_audio_queries_loss_is_least_when_each_token_writes_on_its_object(seed):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randint(0, 4, (2, 4, 4), generator=g)
    classes = torch.tensor([[0, 1, 5], [2, 0, 1]])  # class 5 has no object: its token should write nowhere
    labels = cell_labels(maps, (4, 4)).flatten(1)
    target = ((classes[:, None, :] == (labels - 1)[..., None]) & (labels > 0)[..., None]).float()  # [B, 16, 3]
    other = torch.rand(2, 16, 3, generator=g)
    at_target = attention_supervision_loss([target], [(4, 4)], classes, maps, queries="audio")
    assert at_target.item() < 1e-4
    assert attention_supervision_loss([other], [(4, 4)], classes, maps, queries="audio").item() > at_target.item()
    # balanced: writing nowhere is not free when the objects are small
    nowhere = attention_supervision_loss([torch.zeros_like(target)], [(4, 4)], classes, maps, queries="audio")
    if target.any():  # half the loss is the positives' -log(1e-4) = 9.2
        assert nowhere.item() > 4
    else:
        assert nowhere.item() < 1e-3


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 31 - 1))
def test_the_loss_is_least_at_its_target(seed):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randint(0, 4, (2, 4, 4), generator=g)  # labels 0 (nothing), 1..3 (classes 0..2)
    classes = torch.tensor([[0, 1, 2], [2, 0, 1]])
    labels = cell_labels(maps, (4, 4)).flatten(1)  # 1 x 1 cells: every pixel its own label
    target = torch.zeros(2, 16, 3)
    for b in range(2):
        for n in range(16):
            if labels[b, n] > 0:
                target[b, n, (classes[b] == labels[b, n] - 1).nonzero()[0, 0]] = 1.0
    logits = torch.randn(2, 16, 4, generator=g)
    other = torch.softmax(logits, -1)[..., :3]  # any attention over the 3 tokens and the null key
    at_target = attention_supervision_loss([target], [(4, 4)], classes, maps)
    assert at_target.item() < 1e-4  # only the 1e-6 inside the logs is left
    assert attention_supervision_loss([other], [(4, 4)], classes, maps).item() > at_target.item()


@pytest.mark.parametrize("queries", ["visual", "audio"])
def test_training_with_attention_supervision_adds_its_term(notebook_world, tmp_path, queries):
    from avs_lib.training.loop import train
    from avs_lib.training.prepare import prepare

    def run(name, weight):
        config = load_config(None, [f"data_root={notebook_world}", "layout=ms3", "image_size=32", "audio_encoder=oracle",
                                    "k=2", "m=2", f"cache_dir={tmp_path / 'cache'}", "progress=false", "epochs=1",
                                    "batch_size=8", "tracking=none", "device=cpu", f"out={tmp_path / name}",
                                    f"attention_supervision={weight}", f"switches.fusion_query={queries}"])
        train(config, prepare(config))
        return json.loads((tmp_path / name / "log.jsonl").read_text().splitlines()[0])["losses"]

    plain, once, twice = run("plain", 0.0), run("once", 1.0), run("twice", 2.0)
    assert all(np.isfinite(twice))
    # the first step sees the same weights and frames: the difference is the weight x the supervision
    # term, about log(K + 1) for attention near uniform over K tokens and the null key (visual
    # queries), of order 1 for write-back weights spread over the frame (audio queries: a balanced BCE on
    # W = S (1 - exp(-N P)), with W about 0.63 S)
    term = once[0] - plain[0]
    assert 0.25 < term < math.log(16)
    assert twice[0] - plain[0] == pytest.approx(2 * term, rel=1e-3)  # the weight scales the term


def test_attention_supervision_is_refused_where_it_cannot_work(notebook_world, tmp_path):
    from avs_lib.training.loop import _check_attention_supervision

    base = [f"data_root={notebook_world}", "layout=ms3", "attention_supervision=1.0"]
    for refused in (["ablation=baseline"], ["variant=released"], ["switches.derivation=false"], ["layout=avss"]):
        with pytest.raises(ValueError, match="derived tokens"):
            _check_attention_supervision(load_config(None, base + refused), notebook_world)
    _check_attention_supervision(load_config(None, base + ["switches.fusion_query=audio"]), notebook_world)
    with pytest.raises(ValueError, match="no world.json"):
        _check_attention_supervision(load_config(None, base), tmp_path)
    _check_attention_supervision(load_config(None, base), notebook_world)  # the composed world's full DDESeg
