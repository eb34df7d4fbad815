"""Faults and bad input, tried as a user would: every case ends in one message that names the file
or key and what to do, a non-zero exit and no traceback (README, "Reliability", lists them)."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_prepared, tiny_run_overrides
from avs_lib.cli import main
from avs_lib.core.config import load_config
from avs_lib.core.errors import CheckpointError, MemoryFileError
from avs_lib.core.locks import RunLock, RunLocked
from avs_lib.memory.build import build_semantic_memory
from avs_lib.memory.io import load_memory, save_memory
from avs_lib.training.checkpoints import read_checkpoint, save_checkpoint
from avs_lib.training.loop import train
from avs_lib.training.predict import load_trained

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- a tiny synthetic run


def _train(out, **kw):
    overrides = tiny_run_overrides(out, **kw)
    return train(load_config(None, overrides), synthetic_prepared()), overrides


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A run stopped after epoch 1 of 2 (last.pt, best.pt, config.json, log.jsonl)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    result, overrides = _train(out, stop_after_epoch=1)
    assert result == {"stopped_after_epoch": 1}
    return out, overrides


def _copy_run(one_epoch, tmp_path):
    import shutil

    out, overrides = one_epoch
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy, [o if not o.startswith("out=") else f"out={copy}" for o in overrides]


def _cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("keep", [1 << 20, 0], ids=["truncated", "empty"])
def test_resume_from_a_truncated_checkpoint_names_it_and_best(one_epoch, tmp_path, capsys, keep):
    run, overrides = _copy_run(one_epoch, tmp_path)
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[:min(keep, len(data) // 2)])
    code, err = _cli(["train", *overrides, "resume=true"], capsys)
    assert code == 2
    assert str(run / "last.pt") in err and "best.pt" in err  # names the file and the way out
    assert ("empty (0 bytes)" if keep == 0 else "cannot be read") in err


def test_a_damaged_checkpoint_fails_its_checksum(one_epoch, tmp_path):
    run, _ = _copy_run(one_epoch, tmp_path)
    state = torch.load(run / "best.pt", weights_only=False)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 1  # a change after writing, checksum kept
    torch.save(state, run / "best.pt")
    with pytest.raises(CheckpointError, match="fails its checksum"):
        read_checkpoint(run / "best.pt")


def test_resume_refuses_another_config_and_keeps_config_json(one_epoch, tmp_path, capsys):
    run, overrides = _copy_run(one_epoch, tmp_path)
    before = (run / "config.json").read_bytes()
    code, err = _cli(["train", *overrides, "resume=true", "seed=4", "lr=0.002"], capsys)
    assert code == 2
    assert "seed: the run has 3, this call gives 4" in err and "lr: the run has 0.001, this call gives 0.002" in err
    assert (run / "config.json").read_bytes() == before


def test_resume_may_add_epochs(one_epoch, tmp_path):
    run, overrides = _copy_run(one_epoch, tmp_path)
    # mark the stopped run's epoch-1 record: a resume keeps it, a run trained again from epoch 0 would not
    state = read_checkpoint(run / "last.pt")
    state["history"][0]["loss"] = -1.0
    save_checkpoint(state, run / "last.pt")
    result = train(load_config(None, [*overrides, "resume=true", "epochs=3", "stop_after_epoch=null"]), synthetic_prepared())
    assert result["epochs"] == 3 and len(result["history"]) == 3
    assert result["history"][0]["loss"] == -1.0 and result["history"][1]["loss"] > 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 3


def test_a_run_folder_needs_resume(one_epoch, tmp_path, capsys):
    run, overrides = _copy_run(one_epoch, tmp_path)
    code, err = _cli(["train", *overrides], capsys)
    assert code == 2 and "already holds a run" in err and "resume=true" in err


@pytest.mark.parametrize("damage", ["line lost", "line beyond"])
def test_log_and_checkpoint_never_disagree_after_resume(one_epoch, tmp_path, damage):
    """A kill between the last.pt rename and the log write: the resume restores the line from the
    checkpoint; a line beyond the checkpoint (an old crash) is dropped."""
    straight, _ = _train(tmp_path / "straight")
    run, overrides = _copy_run(one_epoch, tmp_path)
    if damage == "line lost":
        (run / "log.jsonl").write_text("")  # the epoch-1 line lost
    else:  # an epoch-2 line that no checkpoint holds, left by a crash of an earlier attempt
        with (run / "log.jsonl").open("a") as fh:
            fh.write(json.dumps({"epoch": 2, "loss": 99.0, "losses": [99.0]}) + "\n")
    resumed = train(load_config(None, [*overrides, "resume=true", "stop_after_epoch=null"]), synthetic_prepared())
    lines = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    expected = [json.loads(l) for l in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [l["losses"] for l in lines] == [l["losses"] for l in expected] and len(lines) == 2
    assert resumed["test"] == straight["test"]
    state = read_checkpoint(run / "last.pt")
    assert [r["epoch"] for r in state["log"]] == [1, 2]  # the log lives inside the checkpoint


@pytest.mark.parametrize("case", ["plain_state_dict", "truncated", "memory_npz", "missing"])
def test_eval_names_an_unusable_checkpoint(one_epoch, tmp_path, capsys, case):
    run, _ = one_epoch
    path = tmp_path / "model.pt"
    if case == "plain_state_dict":
        torch.save(torch.load(run / "best.pt", weights_only=False)["model"], path)
        expected = "plain state dict"
    elif case == "truncated":
        path.write_bytes((run / "best.pt").read_bytes()[:5000])
        expected = "cannot be read: it is truncated or damaged"
    elif case == "memory_npz":
        x, y = torch.randn(12, 4), torch.arange(12) % 2
        save_memory(build_semantic_memory(x, y, k=2, m=1), path)
        expected = "NumPy .npz archive"
    else:
        expected = "does not exist"
    code, err = _cli(["eval", "--checkpoint", str(path)], capsys)
    assert code == 2 and str(path) in err and expected in err, err


def test_weights_that_do_not_fit_the_config(one_epoch, tmp_path):
    """A checkpoint whose config names another size than its weights (re-saved, so its checksum holds)."""
    run, _ = one_epoch
    state = read_checkpoint(run / "best.pt")
    state["config"]["size"] = "b0"
    save_checkpoint(state, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"do not fit the model its config describes \(model='baseline', "
                                              r"size='b0'.*tensor\(s\)"):
        load_trained(tmp_path / "edited.pt", prepared=synthetic_prepared())


# ----------------------------------------------------------------------------- the run-folder lock
@contextlib.contextmanager
def lock_holder(folder):
    """Another process holding ``folder``'s run lock for the block (SIGKILLed at its end)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from avs_lib.core.locks import RunLock; "
                               f"RunLock({str(folder)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_train_into_a_locked_folder_refuses_at_once(tmp_path):
    out = tmp_path / "locked"
    with lock_holder(out) as holder:
        t0 = time.time()
        second = subprocess.run([sys.executable, "-m", "avs_lib.cli", "train", *tiny_run_overrides(out)], capture_output=True,
                                text=True, cwd=ROOT, timeout=120)
        seconds = time.time() - t0
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"in use by another run (pid {holder.pid} on host {socket.gethostname()}" in second.stderr
    assert seconds < 30  # before any data work (it is mostly Python and torch starting)
    # the holder was SIGKILLed: its lock is stale, reported and taken over
    said = []
    with RunLock(out, log=said.append):
        pass
    assert said and f"stale lock (pid {holder.pid}" in said[0] and "no longer runs" in said[0]
    assert not (out / "run.lock").exists()


def test_a_lock_on_another_host_says_how_to_remove_it(tmp_path, capsys):
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "node-7", "since": "2026-01-01T00:00:00"}))
    with pytest.raises(RunLocked, match=r"pid 1 on host node-7.*another host.*delete .*run.lock"):
        RunLock(tmp_path).acquire()
    code, err = _cli(["train", *tiny_run_overrides(tmp_path)], capsys)
    assert code == 2 and "node-7" in err


# ----------------------------------------------------------------------------- memory files
@pytest.fixture
def memory_file(tmp_path):
    x, y = torch.randn(30, 6), torch.arange(30) % 3
    return save_memory(build_semantic_memory(x, y, k=2, m=2, class_names=["a", "b", "c"]), tmp_path / "memory.npz")


def _rewrite(path, drop=(), rename=None, header=None):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k not in drop}
    if rename:
        arrays[rename[1]] = arrays.pop(rename[0])
    if header is not None:
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_memory_cases_name_the_file_and_say_rebuild(memory_file, one_epoch):
    header = json.loads(bytes(np.load(memory_file)["header"]).decode())
    cases = {
        "no header": (lambda p: _rewrite(p, drop=("header",)), "has no header"),
        "renamed array": (lambda p: _rewrite(p, rename=("features", "feats")), r"lacks the array\(s\) \['features'\]"),
        "newer version": (lambda p: _rewrite(p, header={**header, "format_version": 99}), "version 99 .newer than"),
        "truncated": (lambda p: p.write_bytes(p.read_bytes()[:700]), "not a readable .npz"),
        "empty": (lambda p: p.write_bytes(b""), r"empty \(0 bytes\)"),
        "damaged array": (lambda p: _rewrite(p, header={**header, "checksum": "0" * 64}), "fails its checksum"),
    }
    original = memory_file.read_bytes()
    for name, (damage, message) in cases.items():
        memory_file.write_bytes(original)
        damage(memory_file)
        with pytest.raises(MemoryFileError, match=message) as error:
            load_memory(memory_file)
        assert str(memory_file) in str(error.value) and "rebuild the memory" in str(error.value), name
    run, _ = one_epoch
    with pytest.raises(MemoryFileError, match="is a training checkpoint"):
        load_memory(run / "best.pt")


def test_a_version_1_memory_still_reads(memory_file):
    header = json.loads(bytes(np.load(memory_file)["header"]).decode())
    old = {k: header[k] for k in ("class_names", "k", "m", "dim", "meta")}
    _rewrite(memory_file, header={"format_version": 1, **old})
    assert load_memory(memory_file, class_names=["a", "b", "c"]).k == 2


# ----------------------------------------------------------------------------- avs run status
NOTEBOOK = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
seconds = 60
run_dir = ""

# %%
import time
from pathlib import Path
Path(run_dir, "sleeping").touch()  # the test's sign that the kernel runs this cell
time.sleep(seconds)
'''


class _Stopped(Exception):
    pass


def test_a_signal_during_a_checkpoint_write_waits_for_the_whole_file(tmp_path):
    """A signal whose handler raises, arriving inside torch.save, used to surface as the zip writer's
    RuntimeError ("unexpected pos"): now the file is finished first, then the handler's exception."""
    def stop(signum, frame):
        raise _Stopped(signum)

    state = {"model": {f"w{i}": torch.full((64, 64), float(i)) for i in range(8)}, "config": {}, "epoch": 3}
    real_save = torch.save

    def save_and_signal(obj, fh, *args, **kwargs):
        fh.write(b"")  # the file is open and being written: the signal comes now
        os.kill(os.getpid(), signal.SIGTERM)
        return real_save(obj, fh, *args, **kwargs)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        torch.save = save_and_signal
        with pytest.raises(_Stopped):
            save_checkpoint(state, tmp_path / "last.pt")
    finally:
        torch.save = real_save
        signal.signal(signal.SIGTERM, previous)
    assert read_checkpoint(tmp_path / "last.pt")["epoch"] == 3  # whole and readable
    assert signal.getsignal(signal.SIGTERM) is previous
    assert not list(tmp_path.glob(".last.pt.*"))  # no temporary left behind


def test_signals_deferred_delivers_each_signal_once_after_the_block():
    from avs_lib.core.files import signals_deferred

    seen = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: seen.append(signum))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            inside = list(seen)
        assert inside == [] and seen == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_avs_run_status_after_a_signal(tmp_path, how):
    from avs_lib.experiments.notebooks import run_status

    (tmp_path / "sleepy.py").write_text(NOTEBOOK)
    process = subprocess.Popen([sys.executable, "-m", "avs_lib.cli", "run", str(tmp_path / "sleepy.py"), "--name", "r",
                                "--runs-dir", str(tmp_path / "runs"), "--quiet"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status_path = tmp_path / "runs" / "r" / "status.json"
    # The signal must reach a run whose kernel is inside the cell. A fixed wait was not enough: in a
    # fresh clone the first kernel start (no bytecode cached yet) can take longer than the 3 s this
    # test slept, and a SIGTERM before the kernel starts leaves no kernel.log.
    deadline = time.time() + 120
    while not (status_path.parent / "sleeping").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert (status_path.parent / "sleeping").exists(), process.communicate(timeout=60)
    assert run_status(tmp_path / "runs" / "r")["status"] == "running"
    process.send_signal(getattr(signal, how))
    _, err = process.communicate(timeout=60)
    status = run_status(tmp_path / "runs" / "r")
    if how == "SIGTERM":
        assert process.returncode == 128 + signal.SIGTERM
        # one line; the kernel's own log (its ZMQError when its client goes mid-reply) is kept off the terminal
        assert err.strip().splitlines() == [f"avs run: stopped by SIGTERM; {status_path} says interrupted; the partial "
                                            f"notebook is {status_path.parent / 'sleepy.ipynb'}"], err
        assert (status_path.parent / "kernel.log").exists()
        assert status["status"] == "interrupted" and "SIGTERM" in status["error"]
    else:
        assert json.loads(status_path.read_text())["status"] == "running"  # nothing could write it
        assert status["status"] == "killed" and str(process.pid) in status["note"]


# ----------------------------------------------------------------------------- tracking
def test_wandb_offline(tmp_path):
    pytest.importorskip("wandb", reason="wandb is the optional extra: pip install -e '.[wandb]'")
    os.environ.setdefault("WANDB_SILENT", "true")
    result, _ = _train(tmp_path / "run", tracking="wandb", epochs=1)
    assert "test" in result
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_wandb_missing_is_one_message(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ValueError, match=r"optional wandb package: pip install .*\[wandb\]"):
        _train(tmp_path / "run", tracking="wandb", epochs=1)


# ----------------------------------------------------------------------------- through `avs train` on a world
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from avs_lib.world.compose import WorldConfig
    from avs_lib.world.write import write_world

    root = tmp_path_factory.mktemp("faults_world")
    # every class needs single-source clips for the semantic memory
    write_world(WorldConfig(kind="procedural", subsets=("s4",), clips=120, size=32), root / "a", progress=False)
    write_world(WorldConfig(kind="procedural", subsets=("ms3",), clips=8, size=32), root / "b", progress=False)
    os.replace(root / "b" / "Multi-sources", root / "a" / "Multi-sources")
    return root / "a"


def _world_args(world, out, cache, *more):
    return ["train", f"data_root={world}", "layout=ms3", "image_size=32", "batch_size=4", "encoder_epochs=1", "k=2",
            "m=2", f"out={out}", "progress=false", f"cache_dir={cache}", "device=cpu", *more]


def test_stop_resume_tensorboard_and_eval_through_the_cli(world, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, cache = tmp_path / "run", tmp_path / "cache"
    capsys.readouterr()
    assert main(_world_args(world, out, cache, "epochs=2", "stop_after_epoch=1")) == 0
    said = capsys.readouterr().out
    assert "stopped after epoch 1 of 2" in said and "resume=true" in said and not (out / "metrics.json").exists()
    assert main(_world_args(world, out, cache, "epochs=2", "resume=true", "stop_after_epoch=null")) == 0
    assert (out / "metrics.json").exists()

    # the resumed run starts at an epoch boundary, so no step is written twice; the reader must not
    # drop the first run's events as orphans when the second file opens
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0},
                              purge_orphaned_data=False)
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/epoch_loss", "val/J", "val/F", "val/JF"} <= set(tags["scalars"])
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    # one point per epoch, none doubled by the resume, each equal to the epoch's log line
    # in step order: the two event files (first run, resumed run) are read in the order of their names,
    # which for two files opened in the same second is the order of their process ids
    def by_step(tag):
        return sorted(events.Scalars(tag), key=lambda e: e.step)

    assert [e.step for e in by_step("train/loss")] == list(range(sum(len(r["losses"]) for r in log)))
    assert [round(e.value, 5) for e in by_step("val/JF")] == [round(r["val"]["JF"], 5) for r in log]
    losses = [e.value for e in by_step("train/loss")]
    np.testing.assert_allclose(losses, [x for r in log for x in r["losses"]], rtol=1e-6)
    assert len(events.Images("val/masks")) == 2

    # a checkpoint whose config names another size than its weights (checksum recomputed)
    state = read_checkpoint(out / "best.pt")
    state["config"]["size"] = "b0"
    save_checkpoint(state, tmp_path / "edited.pt")
    code, err = _cli(["eval", "--checkpoint", str(tmp_path / "edited.pt")], capsys)
    assert code == 2 and "do not fit the model its config describes" in err and "size='b0'" in err
    assert len(err) < 1000  # one message, not torch's list of every tensor
    # the same edit without the checksum
    torch.save(state, tmp_path / "edited2.pt")
    code, err = _cli(["eval", "--checkpoint", str(tmp_path / "edited2.pt")], capsys)
    assert code == 2 and "fails its checksum" in err

    # a stale memory in the cache: the same message through avs train (delete it and avs train rebuilds it)
    memory = next(cache.glob("memory_*.npz"))
    _rewrite(memory, drop=("header",))
    code, err = _cli(_world_args(world, tmp_path / "run2", cache, "epochs=1"), capsys)
    assert code == 2 and str(memory) in err and "rebuild the memory: delete" in err
    memory.unlink()
    assert main(_world_args(world, tmp_path / "run3", cache, "epochs=1", "tracking=none")) == 0
    assert load_memory(memory).k == 2  # rebuilt
