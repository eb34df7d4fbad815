"""Issue 21's cases: nothing stale, nothing mixed, nothing silently damaged, and every fault one
message (README, "Reliability"). Disk-full cases run on a small tmpfs where this process may mount
one (root), and are skipped with the reason elsewhere; one case monkeypatches the write instead."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from avs_lib.cli import main
from avs_lib.core.errors import CheckpointError
from avs_lib.core.errors import DataError
from avs_lib.core.files import DiskFull, atomic_write
from avs_lib.data.datasets import AVSDataset
from avs_lib.training.checkpoints import read_checkpoint, save_checkpoint, state_checksum
from avs_lib.world.compose import WorldConfig
from avs_lib.world.write import write_world
from conftest import synthetic_prepared, tiny_run_overrides
from test_faults import NOTEBOOK, _cli, _train, lock_holder

ROOT = Path(__file__).resolve().parents[1]


def _world_argv(out, *more):
    return ["world", "--kind", "procedural", "--subsets", "s4", "--clips", "6", "--size", "32", "--quiet",
            "--out", str(out), *more]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a folder on a tmpfs of ``size`` bytes (unmounted after the test)."""
    mounted = []

    def mount(size: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a full disk is tried on a small tmpfs, which only root may mount")
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"mount -t tmpfs is not allowed here ({done.stderr.strip()})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# ----------------------------------------------------------------------------- avs world owns its folder
def test_world_into_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "W"
    assert _cli(_world_argv(out, "--seed", "1"), capsys)[0] == 0
    before = (out / "world.json").read_bytes()
    capsys.readouterr()
    assert main(_world_argv(out, "--seed", "1")) == 0  # the same world: nothing to do, said so
    assert "already holds this world" in capsys.readouterr().out
    code, err = _cli(_world_argv(out, "--seed", "3"), capsys)
    assert code == 2 and str(out) in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "world.json").read_bytes() == before  # refused before touching anything
    (out / "cache").mkdir()
    (out / "cache" / "memory_single_x_k1_m1_s0.npz").write_bytes(b"old")
    stray = out / "Single-source" / "s4_data" / "visual_frames" / "train" / "bell" / "s4_99999"
    stray.mkdir(parents=True)
    assert _cli(_world_argv(out, "--seed", "3", "--overwrite"), capsys)[0] == 0
    assert json.loads((out / "world.json").read_text())["config"]["seed"] == 3
    assert not (out / "cache").exists() and not stray.exists()
    # every clip folder left is one the new metadata lists: nothing of the old world stays behind
    listed = {r.clip for r in AVSDataset(out, "s4").records}
    on_disk = {p.name for p in (out / "Single-source" / "s4_data" / "visual_frames").glob("*/*/*")}
    assert on_disk == listed


def test_two_world_writers_into_one_folder(tmp_path, capsys):
    out = tmp_path / "W"
    with lock_holder(out) as holder:
        code, err = _cli(_world_argv(out, "--seed", "3"), capsys)
    assert code == 2 and f"in use by another run (pid {holder.pid}" in err and "choose another --out" in err
    assert not (out / "world.json").exists() and not (out / "Single-source").exists()


# ----------------------------------------------------------------------------- caches keyed by their data
def test_a_cached_memory_of_another_world_is_rebuilt(tmp_path, capsys):
    from avs_lib.audio.encoders import encoder_id
    from avs_lib.audio.encoders import SmallAudioEncoder
    from avs_lib.memory.io import build_world_memory

    torch.manual_seed(0)
    encoder = SmallAudioEncoder(dim=8, channels=(4, 4, 8, 8)).eval()
    identifier = encoder_id(encoder)
    world = tmp_path / "W"

    def build(seed, cache):
        write_world(WorldConfig(kind="procedural", subsets=("s4",), clips=60, size=32, seed=seed), world,
                    progress=False, overwrite=True)
        return build_world_memory(world, encoder, identifier, cache, k=1, m=1)

    shared = tmp_path / "cache"  # a cache_dir outside the world: --overwrite does not clear it
    first = build(1, shared)
    capsys.readouterr()
    second = build(3, shared)  # the world rebuilt in place: same file name, other data
    assert "was built from another version of" in capsys.readouterr().err
    fresh = build_world_memory(world, encoder, identifier, tmp_path / "fresh", k=1, m=1)
    assert not torch.equal(first.centroids, second.centroids)
    torch.testing.assert_close(second.centroids, fresh.centroids)  # as built from scratch for this world


def test_avs_embed_refuses_embeddings_of_another_version(tmp_path):
    from avs_lib.audio.embed import embed_dataset

    class MeanEncoder:  # the mean of each frame's samples: enough to tell two worlds apart
        identifier, dim, sample_rate = "mean", 1, 16000

        def embed_frames(self, segments):
            return np.array([[float(np.mean(s))] for s in segments], dtype=np.float32)

    world = tmp_path / "W"
    write_world(WorldConfig(kind="procedural", subsets=("s4",), clips=3, size=32, seed=1), world, progress=False)
    embed_dataset(world, "s4", MeanEncoder(), tmp_path / "emb", progress=False)
    write_world(WorldConfig(kind="procedural", subsets=("s4",), clips=3, size=32, seed=3), world, progress=False,
                overwrite=True)
    with pytest.raises(ValueError, match="another version of") as error:
        embed_dataset(world, "s4", MeanEncoder(), tmp_path / "emb", progress=False)
    assert str(tmp_path / "emb") in str(error.value)


# ----------------------------------------------------------------------------- checksums cover everything
def test_damage_to_the_optimiser_state_fails_the_checksum(tmp_path, capsys):
    _, overrides = _train(tmp_path / "run", stop_after_epoch=1)
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=False)
    moments = next(iter(state["optimiser"]["state"].values()))
    moments["exp_avg"].view(-1)[0] += 1.0  # one changed value in an optimiser tensor, checksum kept
    torch.save(state, last)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        read_checkpoint(last)
    code, err = _cli(["train", *overrides, "resume=true"], capsys)
    assert code == 2 and str(last) in err and "fails its checksum" in err


def test_a_version_1_checkpoint_still_reads(tmp_path):
    _train(tmp_path / "run", epochs=1)
    state = read_checkpoint(tmp_path / "run" / "best.pt")
    state["format_version"] = 1
    state["checksum"] = state_checksum(state["model"], state["config"], state["epoch"])
    torch.save(state, tmp_path / "v1.pt")
    assert read_checkpoint(tmp_path / "v1.pt")["epoch"] == 0


@pytest.fixture
def s4_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel_world") / "W"
    write_world(WorldConfig(kind="procedural", subsets=("s4",), clips=6, size=32), root, progress=False)
    return root


@pytest.mark.parametrize("damage", ["truncated", "changed"])
def test_a_damaged_cached_encoder_is_named(s4_world, tmp_path, capsys, damage):
    from avs_lib.audio.encoders import SmallAudioEncoder, save_audio_encoder
    from avs_lib.audio.pretrain import PretrainConfig, pretrain_key, world_setup
    from avs_lib.world.compose import heldout_members

    library, world = world_setup(s4_world)
    config = PretrainConfig(steps=1, dim=8)
    cached = tmp_path / f"pretrained_audio_{pretrain_key(library, world, heldout_members(library, world), config)}.pt"
    save_audio_encoder(SmallAudioEncoder(dim=8, channels=(4, 4, 8, 8)), cached, library.class_names, {})
    if damage == "truncated":
        cached.write_bytes(cached.read_bytes()[:3000])
    else:
        blob = torch.load(cached, weights_only=False)
        name = next(iter(blob["state_dict"]))
        blob["state_dict"][name] += 1
        torch.save(blob, cached)
    code, err = _cli(["pretrain-audio", "--world", str(s4_world), "--cache", str(tmp_path), "--steps", "1",
                      "--dim", "8", "--quiet"], capsys)
    expected = "cannot be read: it is truncated or damaged" if damage == "truncated" else "fails its checksum"
    assert code == 2 and str(cached) in err and expected in err and f"delete {cached}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- a full disk
def test_train_into_a_full_disk_keeps_the_last_checkpoint(tmp_path, tmpfs, capsys, monkeypatch):
    _train(tmp_path / "probe", stop_after_epoch=1)
    size = (tmp_path / "probe" / "last.pt").stat().st_size
    # room for epoch 1's best.pt and last.pt, not for epoch 2's next one beside them
    disk = tmpfs(2 * size + size // 2 + 64 * 1024)
    monkeypatch.setattr("avs_lib.training.loop.prepare", lambda config, progress=False: synthetic_prepared())
    out = disk / "run"
    code, err = _cli(["train", *tiny_run_overrides(out, epochs=3)], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "no space left on device" in err and str(out) in err and "resume=true" in err
    assert read_checkpoint(out / "last.pt")["epoch"] == 0  # epoch 1's checkpoint, whole and verified
    assert not list(out.glob(".*.tmp"))  # the cut-short temporary file is gone


def test_a_write_that_meets_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    """Without a tmpfs: the write raises ENOSPC as the operating system would."""
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def full(fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFull, match=f"no space left on device writing {path}.*metrics.json is as it was"):
        atomic_write(path, full)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_world_into_a_full_disk(tmpfs, capsys):
    disk = tmpfs(96 * 1024)
    code, err = _cli(_world_argv(disk / "W", "--seed", "1"), capsys)
    assert code == 2 and "no space left on device" in err and str(disk / "W") in err and "Traceback" not in err


def test_avs_run_into_a_full_disk(tmp_path, tmpfs):
    import nbformat

    notebook = tmp_path / "chatty.py"
    notebook.write_text(NOTEBOOK.replace("time.sleep(seconds)", "print('x' * 400_000)"))
    runs = tmpfs(200 * 1024)
    done = subprocess.run([sys.executable, "-m", "avs_lib.cli", "run", str(notebook), "--name", "r", "--runs-dir",
                           str(runs), "--quiet"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    said = [line for line in done.stderr.splitlines() if not line.startswith("[IPKernelApp]")]  # the kernel's log
    assert done.returncode == 2 and said == [said[-1]] and said[-1].startswith("avs run: error: no space left on device")
    assert str(runs / "r") in said[-1] and "Traceback" not in done.stderr
    status = json.loads((runs / "r" / "status.json").read_text())
    assert status["status"] == "failed" and "no space left" in status["error"]
    nbformat.read(runs / "r" / "chatty.ipynb", as_version=4)  # valid JSON, whatever it holds


# ----------------------------------------------------------------------------- signals
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_signal_to_avs_train_is_one_line(tmp_path, how):
    out = tmp_path / "run"
    script = ("import sys; sys.path.insert(0, 'tests'); import avs_lib.training.loop as engine; from conftest import "
              "synthetic_prepared, tiny_run_overrides; engine.prepare = lambda config, progress=False: synthetic_prepared(); "
              "from avs_lib.cli import main; "
              f"sys.exit(main(['train', *tiny_run_overrides({str(out)!r}, epochs=500)]))")
    # A shell's background job starts with SIGINT ignored, and the child would inherit that: give it
    # the default disposition, as a process started from a terminal has.
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(getattr(signal, how))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + getattr(signal, how), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().startswith(f"avs train: stopped by {how}") and len(err.strip().splitlines()) == 1
    assert f"{out / 'last.pt'} holds epoch" in err and "resume=true" in err
    assert not (out / "run.lock").exists()  # the folder is free again
    read_checkpoint(out / "last.pt")


# ----------------------------------------------------------------------------- refused by the config check
def test_cuda_without_cuda_is_refused_before_data_work(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = _cli(["train", "--config", "configs/tiny_world.yaml", "device=cuda", "data_root=/nonexistent"], capsys)
    assert code == 2 and "device='cuda'" in err and "no CUDA" in err and "device=cpu" in err


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_image_size_below_the_smallest_is_refused_and_the_smallest_works(capsys, variant):
    from avs_lib.core.config import _smallest_image_size, load_config
    from avs_lib.memory.build import build_semantic_memory
    from avs_lib.models import build_model

    # a MiT config (the default config's EfficientNet takes any size)
    smallest = _smallest_image_size(load_config("configs/ablation_world.yaml", [f"variant={variant}"]))
    code, err = _cli(["train", "--config", "configs/ablation_world.yaml", f"variant={variant}", "image_size=7",
                      "data_root=/nonexistent"], capsys)
    assert code == 2 and "image_size=7" in err and f"image_size >= {smallest}" in err
    # the number is the model's own limit: it runs at that size and not one pixel below
    memory = build_semantic_memory(torch.randn(80, 16), torch.arange(80) % 8, k=2, m=2, class_names=list("abcdefgh"))
    model = build_model("ddeseg", size="tiny", variant=variant, ablation="full", memory=memory).eval()
    with torch.no_grad():
        model(torch.rand(1, 3, smallest, smallest), torch.randn(1, 16))
        with pytest.raises(RuntimeError):
            model(torch.rand(1, 3, smallest - 1, smallest - 1), torch.randn(1, 16))


def test_out_naming_a_file_is_one_message(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    code, err = _cli(["train", *tiny_run_overrides(tmp_path / "taken")], capsys)
    assert code == 2 and f"{tmp_path / 'taken'} is a file, not a folder" in err and "choose another out=" in err


# ----------------------------------------------------------------------------- parameters and files named
def test_a_notebook_parameter_of_the_wrong_type(tmp_path, capsys):
    notebook = tmp_path / "typed.py"
    notebook.write_text(NOTEBOOK.replace("seconds = 60", "seconds = 60\nclip_index = 0\nlabel = 'a'"))
    code, err = _cli(["run", str(notebook), "-p", "clip_index", "abc", "--runs-dir", str(tmp_path / "runs")], capsys)
    assert code == 2 and "parameter 'clip_index' must be an integer" in err and "clip_index = 0" in err
    assert not (tmp_path / "runs").exists()  # refused before any run folder or kernel
    from avs_lib.experiments.notebooks import check_parameter_types

    check_parameter_types(notebook, {"seconds": 60.0, "label": "a"}, {"seconds": 2, "label": "3"})  # fits


def test_an_s4_table_without_its_category_column(s4_world, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(s4_world, copy)
    table = copy / "Single-source" / "s4_meta_data.csv"
    rows = [line.split(",") for line in table.read_text().splitlines()]
    table.write_text("".join(",".join(r[:2] + r[3:]) + "\n" for r in rows))  # drop 'category'
    with pytest.raises(DataError, match=r"missing column\(s\) \['category'\]"):
        AVSDataset(copy, "s4")
    assert main(["check-data", str(copy), "--layout", "s4", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "'category'" in err and len(err.strip().splitlines()) == 2  # the count line and one problem


def test_avs_eval_after_the_data_moved_names_its_option(tmp_path, capsys):
    _train(tmp_path / "run", epochs=1)
    state = read_checkpoint(tmp_path / "run" / "best.pt")
    state["config"]["data_root"] = str(tmp_path / "moved-away")
    save_checkpoint(state, tmp_path / "moved.pt")
    code, err = _cli(["eval", "--checkpoint", str(tmp_path / "moved.pt")], capsys)
    assert code == 2 and "--data-root" in err and "moved-away" in err
    code, err = _cli(["eval", "--checkpoint", str(tmp_path / "moved.pt"), "--data-root", str(tmp_path / "nowhere")],
                     capsys)
    assert code == 2 and f"--data-root {tmp_path / 'nowhere'} does not exist" in err


def test_avs_report_on_a_truncated_metrics_json(tmp_path, capsys):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"J": 0.5, ')
    code, err = _cli(["report", str(run)], capsys)
    assert code == 2 and str(run / "metrics.json") in err and "not valid JSON" in err
