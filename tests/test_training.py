"""The training engine: bit-exact resume, DDP (gloo, 2 processes) equal to one process, the CLI."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from avs_lib.cli import main
from avs_lib.core.config import TrainConfig
from avs_lib.data.frames import FrameSet
from avs_lib.training.loop import learning_rate, parameter_groups, train
from avs_lib.training.prepare import Prepared


def _frames(n, seed, size=64, dim=16):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):  # a square whose place the audio tells
        x = int(torch.randint(0, size - 20, (1,), generator=g))
        masks[i, 10:30, x:x + 20] = 1
    audio = torch.randn(n, dim, generator=g)
    images = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)
    return FrameSet(images, masks, torch.ones(n, dtype=torch.bool), audio, [f"c{i // 4}" for i in range(n)],
                    [i % 4 for i in range(n)], ["x"] * n)


def _prepared():
    return Prepared(_frames(16, 0), _frames(8, 1), _frames(8, 2), memory=None, num_classes=1)


def _config(out, **kw):
    base = dict(model="baseline", ablation=None, size="tiny", audio_dim=16, epochs=3, batch_size=4, lr=1e-3, min_lr=1e-4,
                warmup_epochs=1, seed=3, device="cpu", out=str(out), progress=False, flip=True,
                switches={"audio_dim": 16, "decoder_dropout": 0.0, "decoder_norm": "group"})
    base.update(kw)
    return TrainConfig(**base)


def test_resume_continues_exactly(tmp_path):
    prepared = _prepared()
    straight = train(_config(tmp_path / "a"), prepared)
    stopped = train(_config(tmp_path / "b", stop_after_epoch=1), prepared)
    assert stopped == {"stopped_after_epoch": 1}
    with pytest.raises(FileExistsError, match="resume"):
        train(_config(tmp_path / "b"), prepared)
    resumed = train(_config(tmp_path / "b", resume=True), prepared)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["test"] == resumed["test"]
    log_a = [json.loads(l)["losses"] for l in open(tmp_path / "a" / "log.jsonl")]
    log_b = [json.loads(l)["losses"] for l in open(tmp_path / "b" / "log.jsonl")]
    assert log_a == log_b and len(log_a) == 3
    assert not list((tmp_path / "b").glob("*.tmp"))  # atomic writes leave no temporary files


def test_same_seed_same_run_and_seed_matters(tmp_path):
    prepared = _prepared()
    one = train(_config(tmp_path / "one", epochs=1), prepared)
    two = train(_config(tmp_path / "two", epochs=1), prepared)
    other = train(_config(tmp_path / "other", epochs=1, seed=4), prepared)
    assert one["history"][0]["loss"] == two["history"][0]["loss"]
    assert one["history"][0]["loss"] != other["history"][0]["loss"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    try:
        train(_config(out, epochs=2), _prepared())
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path):
    train(_config(tmp_path / "single", epochs=2), _prepared())
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    losses_single = [json.loads(l)["losses"] for l in open(tmp_path / "single" / "log.jsonl")]
    losses_ddp = [json.loads(l)["losses"] for l in open(tmp_path / "ddp" / "log.jsonl")]
    np.testing.assert_allclose(np.array(losses_ddp), np.array(losses_single), rtol=1e-4)
    a = torch.load(tmp_path / "single" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


def test_schedule_and_weight_decay_groups():
    lrs = [learning_rate(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = parameter_groups(model, 0.05)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert no_decay["weight_decay"] == 0 and len(no_decay["params"]) == 3


@pytest.fixture(scope="module")
def training_world(tmp_path_factory):
    from avs_lib.world.compose import WorldConfig
    from avs_lib.world.write import write_world

    root = tmp_path_factory.mktemp("train_world")
    # enough single-source clips that every class has features for the semantic memory
    write_world(WorldConfig(kind="procedural", subsets=("s4",), clips=120, size=32), root / "a", progress=False)
    write_world(WorldConfig(kind="procedural", subsets=("ms3",), clips=12, size=32), root / "b", progress=False)
    for sub in ("Multi-sources",):
        os.replace(root / "b" / sub, root / "a" / sub)
    return root / "a"


def test_avs_train_and_eval_cli(training_world, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", f"data_root={training_world}", "layout=ms3", "image_size=64", "epochs=1", "batch_size=4",
                 "encoder_epochs=1", "k=2", "m=2", f"out={out}", "progress=false", f"cache_dir={tmp_path / 'cache'}"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"J", "F", "JF"} and metrics["config"]["epochs"] == 1
    assert (out / "best.pt").exists() and (out / "log.jsonl").exists()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--convention", "avsbench"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["convention"] == "avsbench" and 0 <= result["J"] <= 1
    assert main(["train", "nonsense_key=1"]) == 2


def test_every_shipped_config_parses():
    from pathlib import Path

    from avs_lib.core.config import load_config

    configs = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
    assert len(configs) >= 7
    for path in configs:
        config = load_config(path)
        assert config.model in ("ddeseg", "baseline", "avsac"), path
        assert config.audio_encoder == "small" or config.audio_encoder.split(":")[0] in ("vggish", "htsat", "precomputed"), path


def test_training_on_precomputed_embeddings(training_world, tmp_path):
    """HTS-AT-style embeddings computed elsewhere: one [frames, d] .npy per clip."""
    from avs_lib.core.config import load_config
    from avs_lib.data.datasets import AVSDataset
    from avs_lib.training.prepare import prepare

    folder = tmp_path / "embeddings"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for layout in ("s4", "ms3"):
        for clip in AVSDataset(training_world, layout).clips:
            np.save(folder / f"{clip}.npy", rng.normal(size=(5, 24)).astype(np.float32))
    config = load_config(None, [f"data_root={training_world}", "layout=ms3", "image_size=64", "epochs=1", "batch_size=4",
                                f"audio_encoder=precomputed:{folder}", "audio_dim=24", "k=2", "m=2",
                                f"out={tmp_path / 'run'}", "progress=false", f"cache_dir={tmp_path / 'cache'}"])
    prepared = prepare(config)
    first = prepared.val
    np.testing.assert_array_equal(first.audio[0].numpy(), np.load(folder / f"{first.clips[0]}.npy")[first.frames[0]])
    assert prepared.memory.dim == 24
    assert set(train(config, prepared)["test"]) >= {"J", "F", "JF"}
