"""Every broken input gets an error that names the file; `avs check-data` lists them all."""
import shutil

import numpy as np
import pytest
from PIL import Image

from avs_lib.cli import main
from avs_lib.core.errors import DataError
from avs_lib.data.datasets import AVSDataset, check_data
from avs_lib.world.write import world_roots


@pytest.fixture
def broken_copy(procedural_world, tmp_path):
    _, root = procedural_world
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    return copy


def _first_val_clip(root):
    dataset = AVSDataset(root, "ms3", "val")
    return dataset.records[0]


def _assert_reported(root, layout, path, capsys, **kwargs):
    problems = check_data(root, layout, **kwargs)
    assert any(str(path) in p for p in problems), problems
    argv = ["check-data", str(root), "--layout", layout, "--quiet"]
    assert main(argv) == 1
    assert str(path) in capsys.readouterr().err


def test_truncated_wav(broken_copy, capsys):
    rec = _first_val_clip(broken_copy)
    data = rec.audio.read_bytes()
    rec.audio.write_bytes(data[: len(data) // 3])  # cut inside frame 2
    _assert_reported(broken_copy, "ms3", rec.audio, capsys)
    dataset = AVSDataset(broken_copy, "ms3", "val")
    with pytest.raises(DataError, match=str(rec.audio)):
        dataset[4]  # frame 5 hears audio past the cut


def test_corrupt_png(broken_copy, capsys):
    rec = _first_val_clip(broken_copy)
    rec.image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _assert_reported(broken_copy, "ms3", rec.image, capsys)
    with pytest.raises(DataError, match="unreadable image"):
        AVSDataset(broken_copy, "ms3", "val")[0]


def test_missing_mask(broken_copy, capsys):
    rec = _first_val_clip(broken_copy)
    rec.masks[0].unlink()
    _assert_reported(broken_copy, "ms3", rec.masks[0], capsys)
    with pytest.raises(DataError, match="mask not found"):
        AVSDataset(broken_copy, "ms3", "val")[0]


def test_mask_of_the_wrong_size(broken_copy, capsys):
    rec = _first_val_clip(broken_copy)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(rec.masks[0])
    _assert_reported(broken_copy, "ms3", rec.masks[0], capsys)
    with pytest.raises(DataError, match="12x10"):
        AVSDataset(broken_copy, "ms3", "val")[0]


def test_csv_with_a_missing_column(broken_copy, capsys):
    avss_root, _ = world_roots(broken_copy)["avss"]
    csv_path = avss_root / "metadata.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(",".join(l.split(",")[:-1]) for l in lines) + "\n")  # drop 'label'
    with pytest.raises(DataError, match=r"missing column\(s\) \['label'\]"):
        AVSDataset(avss_root, "avss")
    _assert_reported(avss_root, "avss", csv_path, capsys)


def test_empty_root(tmp_path, capsys):
    for layout in ["s4", "ms3", "avss", "avss-ddeseg", "vpo"]:
        problems = check_data(tmp_path, layout)
        assert len(problems) == 1 and "not found" in problems[0] and str(tmp_path) in problems[0]
    assert main(["check-data", str(tmp_path), "--layout", "s4"]) == 1
    assert "s4_meta_data.csv" in capsys.readouterr().err


def test_vpo_test_split_hint(procedural_world, tmp_path):
    _, root = procedural_world
    vpo_root, _ = world_roots(root)["msmi"]
    csv_path = vpo_root / "vpo_msmi_data_stereo.csv"
    text = csv_path.read_text()
    copy = tmp_path / "vpo_hint"
    shutil.copytree(vpo_root, copy)
    (copy / csv_path.name).write_text(text.replace(",test\n", ",val\n"))
    with pytest.raises(DataError, match="VPO labels its test set 'val'"):
        AVSDataset(copy, "vpo", "test")


def test_good_world_has_no_problems(procedural_world):
    _, root = procedural_world
    for subset, (sub_root, layout) in world_roots(root).items():
        assert check_data(sub_root, layout) == [], subset
