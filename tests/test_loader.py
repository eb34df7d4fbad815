"""The streaming loader and the augmentation: known answers, determinism, resume (avs_lib.data.loader, .augment)."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from avs_lib.data.augment import augment_frame, colour_jitter, crop_window, frame_rng
from avs_lib.data.loader import (RankBatchSampler, choose_loader, epoch_batches, frame_boxes, make_loader,
                                 stream_frames)
from avs_lib.audio.registry import OracleAudio
from avs_lib.data.frames import load_frames
from avs_lib.training.loop import train
from avs_lib.training.prepare import Prepared
from avs_lib.training.runs import config_differences

from test_training import _config


def _image(h=40, w=60):
    """An asymmetric image: a gradient left to right, a red block at the top left."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    image[:8, :8, 0] = 255
    return image


# ----------------------------------------------------------------------------- augmentation, known answers
def test_crop_window_contains_the_box():
    box = [44, 2, 58, 12]  # x0, y0, x1, y1 near the top right corner
    for i in range(200):
        top, left, h, w = crop_window(40, 60, [box], frame_rng(0, 0, i))
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert top <= box[1] and box[3] <= top + h and left <= box[0] and box[2] <= left + w


def test_released_crop_keeps_the_sounding_object_a_plain_crop_can_lose_it():
    image, mask = _image(), np.zeros((40, 60), np.uint8)
    mask[2:12, 50:58] = 3  # the sounding object, in the top right corner
    box = [50, 2, 58, 12]
    guided = [augment_frame(image, mask, 32, "released", frame_rng(1, 0, i), [box])[1] for i in range(50)]
    assert all((m == 3).any() for m in guided)  # the object is in every guided crop
    assert all(set(np.unique(m)) <= {0, 3} for m in guided)  # nearest: no new classes
    plain = [augment_frame(image, mask, 32, "released", frame_rng(1, 0, i), [])[1] for i in range(50)]
    assert not all((m == 3).any() for m in plain)  # without the box, some crops miss it


def test_flip_of_an_asymmetric_image():
    image, mask = _image(32, 32), np.zeros((32, 32), np.uint8)
    mask[:, :5] = 1
    flipped = kept = 0
    for i in range(20):
        out, out_mask = augment_frame(image, mask, 32, "flip", frame_rng(0, 0, i), None)
        if np.array_equal(out, image[:, ::-1]):
            assert np.array_equal(out_mask, mask[:, ::-1]) and out_mask[:, -5:].all()
            flipped += 1
        else:
            assert np.array_equal(out, image) and np.array_equal(out_mask, mask)
            kept += 1
    assert flipped and kept


def test_colour_jitter_known_answers():
    image = _image()
    assert np.array_equal(colour_jitter(image, frame_rng(0, 0, 0), (0, 0, 0, 0)), image)  # factors 0: identity
    grey = np.full((8, 8, 3), 100, np.uint8)
    # saturation and hue do not change a grey image; contrast does not change a flat one
    assert np.array_equal(colour_jitter(grey, frame_rng(0, 0, 0), (0, 0.2, 0.2, 0.1)), grey)
    for i in range(20):  # brightness only: one factor in [0.8, 1.2] over the whole image
        out = colour_jitter(grey, frame_rng(0, 0, i), (0.2, 0, 0, 0)).astype(int)
        assert len(np.unique(out)) == 1 and 80 <= out[0, 0, 0] <= 120
    hue = colour_jitter(image, frame_rng(0, 0, 3), (0, 0, 0, 0.1))
    assert not np.array_equal(hue, image)


def test_same_seed_epoch_index_same_draw_other_epoch_other_draw():
    image, mask = _image(), np.zeros((40, 60), np.uint8)
    for kind in ("released", "avsbench"):
        a = augment_frame(image, mask, 32, kind, frame_rng(5, 2, 7), [[10, 10, 20, 20]])
        b = augment_frame(image, mask, 32, kind, frame_rng(5, 2, 7), [[10, 10, 20, 20]])
        c = augment_frame(image, mask, 32, kind, frame_rng(5, 3, 7), [[10, 10, 20, 20]])
        assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])
        assert a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8 and a[1].dtype == np.uint8


# ----------------------------------------------------------------------------- sampler
def test_ranks_together_see_the_batches_of_one_process_and_resume_mid_epoch():
    one = list(RankBatchSampler(50, 8, seed=3, epoch=1, steps_per_epoch=6))
    ranks = [list(RankBatchSampler(50, 8, seed=3, epoch=1, steps_per_epoch=6, rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == one
    assert list(RankBatchSampler(50, 8, seed=3, epoch=1, steps_per_epoch=6, start_step=4)) == one[4:]
    assert list(RankBatchSampler(50, 8, seed=3, epoch=2, steps_per_epoch=6)) != one
    assert choose_loader("auto", 100, 96) == "memory" and choose_loader("auto", 52_422, 224) == "stream"
    assert choose_loader("stream", 10, 32) == "stream"


# ----------------------------------------------------------------------------- the loader on a small world
@pytest.fixture(scope="module")
def streamed(procedural_world, tmp_path_factory):
    _, root = procedural_world
    oracle = OracleAudio("oracle", root)
    cache = tmp_path_factory.mktemp("loader_cache")
    args = (root, "ms3", "train", 48, oracle, oracle.identifier, cache)
    return root, stream_frames(*args), load_frames(*args)


def _batches(frames, root, epoch=0, start_step=0, **kw):
    config = replace(_config("unused", image_size=48, batch_size=4, seed=2), **kw)
    steps = len(frames) // config.batch_size
    return [tuple(t.clone() for t in b) for b in epoch_batches(frames, config, epoch, steps, 0, 1, torch.device("cpu"),
                                                               start_step, root=root)]


def test_streamed_frames_equal_held_frames(streamed):
    root, stream, held = streamed
    assert torch.equal(stream.images[:], held.images) and torch.equal(stream.masks[:], held.masks)
    assert torch.equal(stream.masks[held.valid], held.masks[held.valid]) and torch.equal(stream.audio, held.audio)
    assert any(frame_boxes(stream.sources, c, f) for c, f in zip(stream.clips, stream.frames))  # the world has boxes


def test_loader_same_batches_any_workers_resume_and_held_equals_streamed(streamed):
    root, stream, held = streamed
    first = _batches(stream, root, augment="released", loader_workers=0)
    again = _batches(stream, root, augment="released", loader_workers=2)
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    resumed = _batches(stream, root, start_step=2, augment="released", loader_workers=2)
    assert len(resumed) == len(first) - 2
    for a, b in zip(first[2:], resumed, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    from_memory = _batches(held, root, augment="released")  # the world's frames are 48 px: the same pixels
    for a, b in zip(first, from_memory, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    other_epoch = _batches(stream, root, epoch=1, augment="released", loader_workers=0)
    assert not torch.equal(first[0][0], other_epoch[0][0])
    images, masks = first[0][0], first[0][1]
    assert images.dtype == torch.uint8 and masks.dtype == torch.int64 and images.shape == (4, 3, 48, 48)


def test_held_frames_flip_resume_mid_epoch(streamed):
    root, _, held = streamed
    full = _batches(held, root)
    for a, b in zip(full[3:], _batches(held, root, start_step=3), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_training_streamed_resumes_exactly(streamed, tmp_path):
    root, stream, held = streamed
    prepared = Prepared(stream, held, held, memory=None, num_classes=1)
    dim = stream.audio.shape[1]  # the oracle's: one per class
    kw = dict(image_size=48, data_root=str(root), augment="released", loader="stream", loader_workers=1, epochs=2,
              batch_size=4, audio_dim=dim, switches={"decoder_dropout": 0.0, "decoder_norm": "group"})
    # two runs: one straight through, one stopped after an epoch and resumed (the same batches, the same weights)
    train(_config(tmp_path / "a", **kw), prepared)
    assert train(_config(tmp_path / "c", stop_after_epoch=1, **kw), prepared) == {"stopped_after_epoch": 1}
    train(_config(tmp_path / "c", resume=True, **kw), prepared)
    logs = [[json.loads(line)["losses"] for line in open(tmp_path / run / "log.jsonl")] for run in "ac"]
    assert logs[0] == logs[1]
    a, c = (torch.load(tmp_path / run / "last.pt", weights_only=False)["model"] for run in "ac")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_new_keys_at_their_defaults_leave_a_run_identity_alone(tmp_path):
    recorded = {k: v for k, v in vars(_config(tmp_path)).items() if k not in ("augment", "loader", "loader_workers")}
    assert config_differences(recorded, _config(tmp_path)) == {}
    assert "augment" in config_differences(recorded, _config(tmp_path, augment="released"))


# ----------------------------------------------------------------------------- the GPU benchmark's CPU path
def test_bench_train_counts_flops_and_refuses_cuda_without_it():
    import subprocess
    import sys
    from pathlib import Path

    from avs_lib.models import build_model

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "benchmarks"))
    from bench_train import bf16_peak_tflops, training_step_flops

    model = build_model("baseline", size="tiny", audio_dim=8, num_classes=3)
    images, audio = torch.randn(2, 3, 32, 32), torch.randn(2, 8)
    masks = torch.randint(0, 3, (2, 32, 32))
    flops = training_step_flops(model, images, audio, masks, lambda: torch.autocast("cpu", enabled=False))
    double = training_step_flops(model, images.repeat(2, 1, 1, 1), audio.repeat(2, 1), masks.repeat(2, 1, 1),
                                 lambda: torch.autocast("cpu", enabled=False))
    assert flops > 0 and double == 2 * flops  # a step's FLOPs grow with the batch
    assert all(p.grad is None for p in model.parameters())
    assert bf16_peak_tflops(torch.device("cpu")) is None
    if not torch.cuda.is_available():
        done = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_train.py"), "--suite", "gpu",
                               "--device", "cuda"], capture_output=True, text=True)
        assert done.returncode == 2 and "no CUDA" in done.stderr


def test_bench_train_times_the_optimiser_step_with_and_without_the_fused_kernel():
    """Each line names the AdamW it used and times its step apart from the rest of the training step."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    lines = []
    for flag in ([], ["--fused-adamw"]):
        done = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_train.py"), "--backbone", "mit",
                               "--image-size", "32", "--batch-size", "2", "--steps", "3", "--audio-dim", "8",
                               "--device", "cpu", *flag], capture_output=True, text=True, check=True)
        lines.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert [line["fused_adamw"] for line in lines] == [False, True]
    for line in lines:
        step_ms = 1000 * line["batch_size"] / line["train_frames_per_second"]
        assert 0 < line["optimiser_step_ms"] < step_ms  # a part of the step, not all of it


def test_a_relative_and_an_absolute_data_root_are_the_same_run():
    """`avs train` records data_root as typed, the notebooks as an absolute path: the same run."""
    from avs_lib.core.config import TrainConfig
    from avs_lib.core.paths import workbench_path
    from avs_lib.training.runs import config_differences

    relative = TrainConfig(data_root="data/default_world")
    absolute = TrainConfig(data_root=str(workbench_path("data/default_world")))
    assert config_differences(relative, absolute) == {}
    assert config_differences(relative, TrainConfig(data_root="data/other_world")) != {}


def test_frames_decoded_in_processes_equal_frames_decoded_in_one(procedural_world, tmp_path):
    # what avs ablation --parallel's parent does on a many-core machine: the same tensors, in the same order
    _, root = procedural_world
    oracle = OracleAudio("oracle", root)
    args = (root, "ms3", "val", 40, oracle, oracle.identifier, tmp_path)
    one, several = load_frames(*args), load_frames(*args, workers=2)
    assert len(one) > 4 and torch.equal(one.images, several.images) and torch.equal(one.masks, several.masks)
    assert one.clips == several.clips and one.frames == several.frames and torch.equal(one.valid, several.valid)
