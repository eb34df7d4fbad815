"""The training engine: bit-exact resume, DDP (gloo, 2 processes) equal to one process, the CLI."""
import atexit
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import free_port, synthetic_prepared, tiny_run_overrides
from avs_lib.cli import main
from avs_lib.core.config import load_config
from avs_lib.training.loop import gloo_threads_alive, learning_rate, parameter_groups, train


def _config(out, **kw):
    """A tiny baseline run on 64 px frames, read by the config loader as ``avs train`` reads it."""
    values = dict(image_size=64, epochs=3, flip="true", tracking="tensorboard")
    values.update({k: str(v).lower() if isinstance(v, bool) else v for k, v in kw.items()})
    return load_config(None, tiny_run_overrides(out, **values))


def test_resume_continues_exactly(tmp_path):
    prepared = synthetic_prepared((16, 8, 8), size=64)
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
    prepared = synthetic_prepared((16, 8, 8), size=64)
    one = train(_config(tmp_path / "one", epochs=1), prepared)
    two = train(_config(tmp_path / "two", epochs=1), prepared)
    other = train(_config(tmp_path / "other", epochs=1, seed=4), prepared)
    assert one["history"][0]["loss"] == two["history"][0]["loss"]
    assert one["history"][0]["loss"] != other["history"][0]["loss"]


def _write_gloo_threads_left(path: str) -> None:
    Path(path).write_text(json.dumps(gloo_threads_alive()))


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    # atexit runs its functions last-registered first: this one runs after the engine's teardown
    atexit.register(_write_gloo_threads_left, f"{out}.threads_left_{rank}.json")
    train(_config(out, epochs=2), synthetic_prepared((16, 8, 8), size=64))


def test_ddp_two_processes_match_one(tmp_path):
    train(_config(tmp_path / "single", epochs=2), synthetic_prepared((16, 8, 8), size=64))
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    # The process group train made was freed at exit, not only forgotten: no gloo thread was left to
    # take the GIL while the interpreter finalised (which ended about 2 exits in 100 with SIGABRT).
    for rank in (0, 1):
        assert json.loads((tmp_path / f"ddp.threads_left_{rank}.json").read_text()) == [], rank
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


@pytest.fixture(scope="module")
def heard_and_deaf(training_world, tmp_path_factory):
    """Two tiny runs on the training world: one heard, one trained without sound (another seed)."""
    root = tmp_path_factory.mktemp("compared")
    common = [f"data_root={training_world}", "layout=ms3", "image_size=64", "epochs=1", "batch_size=4",
              "encoder_epochs=1", "k=2", "m=2", "progress=false", f"cache_dir={root / 'cache'}"]
    assert main(["train", *common, f"out={root / 'heard'}"]) == 0
    assert main(["train", *common, f"out={root / 'deaf'}", "zero_audio=true", "seed=1"]) == 0
    return root


def test_avs_compare_pairs_runs_on_the_same_frames(heard_and_deaf, tmp_path, capsys):
    runs_root = heard_and_deaf
    capsys.readouterr()
    runs = [str(runs_root / "heard"), str(runs_root / "deaf"), str(runs_root / "heard" / "best.pt")]
    assert main(["compare", *runs, "--json", str(tmp_path / "rows.json"), "--curves", str(tmp_path / "curves.png"),
                 "--bootstrap", "200", "--quiet"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["run"] for r in rows] == runs and all(r["run"] in printed for r in rows)
    for row, name in zip(rows, ("heard", "deaf")):  # the training's own test J&F of its best checkpoint
        recorded = json.loads((runs_root / name / "metrics.json").read_text())["test"]["JF"]
        assert row["JF"] == pytest.approx(recorded, abs=1e-6) and row["ci95"][0] <= row["JF"] <= row["ci95"][1]
    assert rows[1]["delta"] == pytest.approx(rows[1]["JF"] - rows[0]["JF"], abs=1e-9)
    assert rows[2]["delta"] == 0 and rows[2]["delta_ci95"] == [0, 0]  # a run against itself
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert main(["compare", runs[0]]) == 2  # nothing to compare with
    capsys.readouterr()
    assert main(["compare", runs[0], str(tmp_path / "typo")]) == 2
    assert "typo does not exist" in capsys.readouterr().err


def test_kept_scores_pair_as_the_run_did_without_its_checkpoint(heard_and_deaf, tmp_path, capsys):
    """`avs compare --save-scores`: a run's per-frame scores kept in a file pair with another run as
    the run itself did, after its checkpoint is gone; a file scored on another split, a file that
    is not one, and two runs that would share a file's name are refused with messages."""
    import shutil

    heard, deaf = tmp_path / "heard", heard_and_deaf / "deaf"
    shutil.copytree(heard_and_deaf / "heard", heard)  # a copy whose checkpoints this test may delete
    kept = tmp_path / "kept"
    assert main(["compare", str(heard), str(deaf), "--json", str(tmp_path / "live.json"), "--save-scores", str(kept),
                 "--bootstrap", "200", "--quiet"]) == 0
    assert sorted(p.name for p in kept.iterdir()) == ["deaf.json", "heard.json"]
    assert "scores of" in capsys.readouterr().err
    # the heard run's checkpoints gone: its kept scores are the reference, and the table is the same
    for checkpoint in ("best.pt", "last.pt"):
        (heard / checkpoint).unlink()
    assert main(["compare", str(kept / "heard.json"), str(deaf), "--json", str(tmp_path / "kept.json"),
                 "--bootstrap", "200", "--quiet"]) == 0
    live, from_file = (json.loads((tmp_path / f).read_text()) for f in ("live.json", "kept.json"))
    assert [(r["JF"], r["ci95"]) for r in from_file] == [(r["JF"], r["ci95"]) for r in live]
    assert from_file[1]["delta"] == live[1]["delta"] and from_file[1]["delta_ci95"] == live[1]["delta_ci95"]
    recorded = json.loads((heard / "metrics.json").read_text())["test"]["JF"]
    assert from_file[0]["JF"] == pytest.approx(recorded, abs=1e-6)  # the training's own reading of that run
    # the kept scores against the same weights scored afresh (the fixture's run, of which `heard` was a copy)
    assert main(["compare", str(kept / "heard.json"), str(heard_and_deaf / "heard"), "--json",
                 str(tmp_path / "self.json"), "--bootstrap", "200", "--quiet"]) == 0
    itself = json.loads((tmp_path / "self.json").read_text())[1]
    assert itself["delta"] == 0 and itself["delta_ci95"] == [0, 0]
    # one run is enough to keep its scores; the learning curve travels with them
    assert main(["compare", str(deaf / "best.pt"), "--save-scores", str(tmp_path / "one"), "--quiet"]) == 0
    saved = json.loads((tmp_path / "one" / "deaf.json").read_text())
    assert saved["history"] == json.loads((deaf / "metrics.json").read_text())["history"]
    capsys.readouterr()
    assert main(["compare", str(kept / "heard.json"), str(deaf), "--split", "val", "--quiet"]) == 2
    assert "scores on the test split, not val" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    assert main(["compare", str(tmp_path / "other.json"), str(deaf), "--quiet"]) == 2
    assert "is not a scores file" in capsys.readouterr().err
    twin = tmp_path / "elsewhere" / "heard"
    shutil.copytree(heard_and_deaf / "heard", twin)
    assert main(["compare", str(heard_and_deaf / "heard"), str(twin), "--save-scores", str(tmp_path / "clash")]) == 2
    err = capsys.readouterr().err
    assert "would both be kept as" in err and "scored" not in err and not (tmp_path / "clash").exists()
    # kept scores are never overwritten by another run's: not a file given, not a file already there
    before = (kept / "heard.json").read_bytes()
    assert main(["compare", str(kept / "heard.json"), str(heard_and_deaf / "heard"), "--save-scores", str(kept)]) == 2
    err = capsys.readouterr().err
    assert "is one of the scores files given" in err and "scored" not in err
    assert main(["compare", str(heard_and_deaf / "heard"), "--save-scores", str(kept), "--quiet"]) == 2
    assert "already keeps the scores of" in capsys.readouterr().err
    assert (kept / "heard.json").read_bytes() == before
    assert main(["compare", str(kept / "heard.json"), "--save-scores", str(tmp_path / "none"), "--quiet"]) == 2
    assert "nothing to keep" in capsys.readouterr().err
    (tmp_path / "damaged.json").write_text(json.dumps({"format": saved["format"], "jf": [0.5]}))
    assert main(["compare", str(tmp_path / "damaged.json"), str(deaf), "--quiet"]) == 2
    assert "damaged scores file" in capsys.readouterr().err


def test_avs_reread_bn_reads_old_runs_again_and_keeps_them(training_world, tmp_path, capsys):
    """A run trained with each layer's own BatchNorm momentum, read again into a new folder: every
    weight as trained, new running statistics, the new reading in metrics.json beside the old ones,
    the run as trained untouched; the new checkpoint gives that reading under avs eval, and so does
    avs eval --recompute-bn on the old one; a second call finds the run done; a run already read
    again, another run's folder under --out and zero batches are refused."""
    import hashlib

    from avs_lib.training.checkpoints import read_checkpoint

    run, out = tmp_path / "runs" / "old", tmp_path / "reread"
    assert main(["train", f"data_root={training_world}", "layout=ms3", "image_size=64", "epochs=1", "batch_size=4",
                 "encoder_epochs=1", "k=2", "m=2", f"out={run}", "progress=false", "bn_momentum=null",
                 f"cache_dir={tmp_path / 'cache'}"]) == 0
    digest = hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    assert main(["reread-bn", str(run.parent), "--out", str(out), "--batches", "3", "--quiet"]) == 0
    old, new = json.loads((run / "metrics.json").read_text()), json.loads((out / "old" / "metrics.json").read_text())
    record = new["batchnorm_recomputed"]
    assert record["test_as_trained"] == old["test"] and 0 < record["frames"] <= 3 * 16
    # trained and re-read on this CPU: the stale statistics read here as they read at the end of training
    assert record["test_stale_here"]["JF"] == pytest.approx(old["test"]["JF"], abs=1e-6)
    assert new["test"]["JF"] != old["test"]["JF"] and new["history"] == old["history"]
    assert (out / "old" / "config.json").read_text() == (run / "config.json").read_text()
    assert hashlib.sha256((run / "best.pt").read_bytes()).hexdigest() == digest
    before, after = read_checkpoint(run / "best.pt"), read_checkpoint(out / "old" / "best.pt")
    assert after["batchnorm_recomputed"] == record
    before, after = before["model"], after["model"]
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert statistics and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if k not in statistics and not k.endswith("num_batches_tracked"))
    assert not all(torch.equal(before[k], after[k]) for k in statistics)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "old" / "best.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["JF"] == pytest.approx(new["test"]["JF"], abs=1e-6)
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--recompute-bn", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["JF"] == pytest.approx(new["test"]["JF"], abs=1e-6)
    assert main(["reread-bn", str(run), "--out", str(out), "--quiet"]) == 0  # one run: out/<its name>, done already
    assert "0 runs re-read" in capsys.readouterr().out
    assert main(["reread-bn", str(out / "old"), "--out", str(tmp_path / "again"), "--quiet"]) == 1
    assert "read again already" in capsys.readouterr().err
    (tmp_path / "other" / "old").mkdir(parents=True)
    for name in ("best.pt", "metrics.json", "config.json"):
        (tmp_path / "other" / "old" / name).write_bytes((run / name).read_bytes())
    assert main(["reread-bn", str(tmp_path / "other"), "--out", str(out)]) == 2
    assert "choose another --out" in capsys.readouterr().err
    assert main(["reread-bn", str(tmp_path / "cache"), "--out", str(out)]) == 2
    with pytest.raises(SystemExit):
        main(["reread-bn", str(run), "--out", str(tmp_path / "zero"), "--batches", "0"])
    from avs_lib.training.predict import reread_run

    with pytest.raises(ValueError, match="overwrite"):
        reread_run(run, run)


def test_prepare_key_names_every_setting_prepare_reads():
    """The runs that ``avs reread-bn`` prepares data for once share every setting that
    ``prepare(config, backbone=False)`` reads: the fields named in its source and in what it calls
    with the config, but for those that choose the pretrained backbone (which a checkpoint replaces)."""
    import inspect
    import re

    from avs_lib.data.loader import split_frames
    from avs_lib.memory.io import load_memory_file
    from avs_lib.training.predict import PREPARE_FIELDS
    from avs_lib.training.prepare import prepare

    source = "".join(inspect.getsource(f) for f in (prepare, split_frames, load_memory_file))
    read = set(re.findall(r"config\.([a-z_]+)", source)) | set(re.findall(r"getattr\(config, \"([a-z_]+)\"", source))
    assert read - {"switches", "visual_pretrain_steps"} == set(PREPARE_FIELDS)


def test_paired_table_needs_the_same_frames_and_pairs_them():
    from avs_lib.analysis.compare import RunScores, paired_table
    from avs_lib.core.errors import DataError

    rng = np.random.default_rng(0)
    frames = [(f"clip{i // 5}", i % 5) for i in range(50)]
    a = RunScores("a", frames, "truth", rng.uniform(0, 1, 50), [])
    shifted = RunScores("b", frames, "truth", a.jf + 0.1, [])  # every frame 0.1 better: no clip resample can say otherwise
    noisy = RunScores("c", frames, "truth", rng.uniform(0, 1, 50), [])
    rows = paired_table([a, shifted, noisy], boot=500)
    assert rows[1]["delta"] == pytest.approx(0.1) and rows[1]["delta_ci95"] == pytest.approx([0.1, 0.1])
    assert rows[1]["ci95"][1] - rows[1]["ci95"][0] > 0.05  # the runs' own intervals are wide, the paired one is not
    assert rows[2]["delta_ci95"][1] - rows[2]["delta_ci95"][0] > 0.05
    with pytest.raises(DataError, match="other frames"):
        paired_table([a, RunScores("d", frames[:-1], "truth", a.jf[:-1], [])])
    with pytest.raises(DataError, match=r"frame 3 is \('clip9', 9\)"):
        paired_table([a, RunScores("e", frames[:3] + [("clip9", 9)] + frames[4:], "truth", a.jf, [])])
    with pytest.raises(DataError, match="masks differ"):  # same names, another world's truth
        paired_table([a, RunScores("f", frames, "other truth", a.jf, [])])


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


def test_batchnorm_momentum_moves_the_running_statistics_not_the_training(tmp_path):
    """bn_momentum=0.1 against each layer's own (Lite0's 0.01): the same weights after training, and
    running statistics nearer those of the final weights, recomputed here over the training frames."""
    from avs_lib.data.transforms import normalise_images
    from avs_lib.training.predict import make_model

    prepared = synthetic_prepared((16, 8, 8), size=64)
    states = {}
    for momentum in ("0.1", "null"):
        out = tmp_path / momentum
        config = _config(out, epochs=3, bn_momentum=momentum, **{"switches.backbone": "efficientnet_lite0"})
        train(config, prepared)
        states[momentum] = torch.load(out / "last.pt", weights_only=False)["model"]
    statistics = [k for k in states["0.1"] if k.endswith(("running_mean", "running_var"))]
    assert len(statistics) > 50  # Lite0's BatchNorm layers are in the model
    weights = [k for k in states["0.1"] if k not in statistics and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(states["0.1"][k], states["null"][k]) for k in weights)
    # the population statistics of the final weights: a cumulative average over every training frame
    model = make_model(config, prepared, pretrained=False)
    model.load_state_dict(states["0.1"])
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
    model.train()
    with torch.no_grad():
        model(normalise_images(prepared.train.images), prepared.train.audio)
    precise = model.state_dict()
    distance = {m: sum(float((states[m][k] - precise[k]).abs().mean()) for k in statistics) for m in states}
    assert distance["0.1"] < 0.5 * distance["null"]


def test_recomputed_batchnorm_statistics_are_the_frames_own():
    """BatchNorms on the normalised pixels and on the audio: after the recomputation their running
    means are the means of what they saw, per channel (zeros for a floor's audio); a layer the model
    keeps in eval mode while training (a frozen stage) keeps its statistics; momenta are restored."""
    from avs_lib.data.transforms import normalise_images
    from avs_lib.training.predict import recompute_batchnorm_statistics

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pixels = torch.nn.BatchNorm2d(3, momentum=0.01)
            self.audio = torch.nn.BatchNorm1d(128)
            self.frozen = torch.nn.BatchNorm2d(3)
            self.frozen.running_mean.fill_(7.0)

        def train(self, mode: bool = True):
            super().train(mode)
            self.frozen.eval()  # as DDESeg's encoder keeps its frozen stages
            return self

        def forward(self, images, audio):
            return self.frozen(self.pixels(images)), self.audio(audio)

    frames = synthetic_prepared((24, 4, 4), size=16).train
    order = torch.randperm(len(frames.images), generator=torch.Generator().manual_seed(1))[:12]
    model = Toy()
    seen = recompute_batchnorm_statistics(model, frames, batches=3, batch_size=4, seed=1)
    assert seen == 12 and not model.training and model.pixels.momentum == 0.01
    assert torch.allclose(model.pixels.running_mean, normalise_images(frames.images[order]).mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.audio.running_mean, frames.audio[order].mean(0), atol=1e-5)
    assert torch.equal(model.frozen.running_mean, torch.full((3,), 7.0))
    assert not torch.allclose(model.pixels.running_mean, torch.zeros(3))
    deaf = Toy()
    recompute_batchnorm_statistics(deaf, frames, batches=3, batch_size=4, seed=1, zero_audio=True)
    assert torch.equal(deaf.audio.running_mean, torch.zeros(128))


def test_bn_momentum_is_checked_and_older_runs_are_other_runs():
    """bn_momentum must lie in (0, 1] or be null; a run recorded before the key (no bn_momentum in
    its config) is the same run as bn_momentum=null, and another run than the default 0.1."""
    from avs_lib.core.errors import ConfigError
    from avs_lib.training.runs import config_differences

    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match="bn_momentum"):
            load_config(None, [f"bn_momentum={bad}"])
    assert load_config(None, ["bn_momentum=null"]).bn_momentum is None
    today = load_config(None, [])
    older = {k: v for k, v in vars(today).items() if k != "bn_momentum"}
    assert today.bn_momentum == 0.1
    assert set(config_differences(older, today)) == {"bn_momentum"}
    assert config_differences(older, load_config(None, ["bn_momentum=null"])) == {}


def test_fused_adamw_trains_the_same_weights_to_rounding_and_is_another_run(tmp_path):
    """fused_adamw=true: the same decay groups, one fused update; after three epochs the weights
    equal the per-parameter loop's up to floating-point rounding, and the run is another run than
    one recorded before the key (which used the loop)."""
    from avs_lib.training.loop import make_optimiser
    from avs_lib.training.runs import config_differences

    prepared = synthetic_prepared((16, 8, 8), size=64)
    states = {}
    for fused in (False, True):
        config = _config(tmp_path / str(fused), fused_adamw=fused)
        train(config, prepared)
        states[fused] = torch.load(tmp_path / str(fused) / "last.pt", weights_only=False)["model"]
    floats = [k for k, v in states[False].items() if v.is_floating_point()]
    moved = [k for k in floats if not torch.equal(states[False][k], states[True][k])]
    assert moved  # another order of operations: not bit-identical
    for k in floats:
        assert torch.allclose(states[False][k], states[True][k], rtol=1e-3, atol=1e-4), k
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    groups = make_optimiser(model, config).param_groups
    assert all(g["fused"] for g in groups) and sorted(g["weight_decay"] for g in groups) == [0.0, config.weight_decay]
    today = load_config(None, ["fused_adamw=true"])
    older = {k: v for k, v in vars(today).items() if k != "fused_adamw"}
    assert set(config_differences(older, today)) == {"fused_adamw"}
    assert config_differences(older, load_config(None, [])) == {}


def test_a_checkpoint_older_than_bn_momentum_loads_as_null(tmp_path):
    """load_trained reads a config without bn_momentum (a checkpoint from before the key) as
    bn_momentum=null, what it trained with, and a config that has the key as it says."""
    from avs_lib.training.predict import load_trained
    from avs_lib.training.checkpoints import read_checkpoint

    prepared = synthetic_prepared((8, 4, 4), size=32)
    train(load_config(None, tiny_run_overrides(tmp_path / "run", epochs=1)), prepared)
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert load_trained(tmp_path / "run" / "last.pt", prepared=prepared, state=state)[1].bn_momentum == 0.1
    older = {**state, "config": {k: v for k, v in state["config"].items() if k != "bn_momentum"}}
    assert load_trained(tmp_path / "run" / "last.pt", prepared=prepared, state=older)[1].bn_momentum is None


def test_a_run_in_a_moved_model_store_is_read_and_resumed_where_the_data_is_now(notebook_world, tmp_path):
    """A world copied with its cache: its store's run loads with today's data_root (what is trained next
    from that config looks for the data there) and resumes there, though it recorded the old one."""
    import shutil
    from dataclasses import replace

    from avs_lib.training.predict import load_trained
    from avs_lib.training.runs import run_state, shared_run_dir

    copy = tmp_path / "world_copy"
    shutil.copytree(notebook_world, copy, ignore=shutil.ignore_patterns("cache"))
    prepared = synthetic_prepared((16, 8, 8), size=64)
    trained = replace(_config(tmp_path / "unused", epochs=2), data_root=str(notebook_world))
    store = shared_run_dir(replace(trained, data_root=str(copy)))  # where the copy's cache holds the run
    # recorded with the old data_root, stopped after its first epoch
    assert train(replace(trained, out=str(store), stop_after_epoch=1), prepared) == {"stopped_after_epoch": 1}
    _, config, _ = load_trained(store / "best.pt", prepared)  # its checkpoint names the old data_root
    assert config.data_root == str(copy) and config.out == str(store)
    now = replace(trained, data_root=str(copy), out=str(store))
    assert run_state(store, now).kind == "resumable"
    resumed = train(replace(now, resume=True), prepared)  # not refused for the moved data_root
    assert len(resumed["history"]) == 2 and run_state(store, now).kind == "finished"
    elsewhere = tmp_path / "mine"  # a user's own out= folder: another data_root stays a difference
    train(replace(trained, out=str(elsewhere), epochs=1), prepared)
    assert load_trained(elsewhere / "best.pt", prepared)[1].data_root == str(notebook_world)
