import json
import subprocess
import sys
from pathlib import Path

import pytest

from avs_lib.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ["world", "check-data", "summary", "pipeline"]:
        assert command in out


def test_world_command_writes_a_checkable_world(tmp_path, capsys):
    out = tmp_path / "w"
    code = main(["world", "--kind", "procedural", "--subsets", "s4,msmi", "--clips", "3", "--size", "32",
                 "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["subsets"] == {"s4": {"train": 1, "val": 1, "test": 1}, "msmi": {"train": 1, "val": 1, "test": 1}}
    assert main(["check-data", str(out), "--layout", "s4", "--quiet"]) == 0
    assert main(["check-data", str(out / "VPO"), "--layout", "vpo", "--quiet"]) == 0
    assert main(["summary", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 clips" in text and "procedural" in text


def test_unknown_subset_is_a_clear_error(tmp_path, capsys):
    assert main(["world", "--kind", "procedural", "--subsets", "s5", "--out", str(tmp_path), "--quiet"]) == 2
    assert "unknown subsets ['s5']" in capsys.readouterr().err


def test_console_script_is_installed():
    avs = Path(sys.executable).parent / "avs"
    result = subprocess.run([str(avs), "check-data", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--layout" in result.stdout


def test_pipeline_refuses_a_folder_that_holds_another_world(tmp_path, capsys):
    """An older default world (other options) is not run on as if it were the default one."""
    out = tmp_path / "w"
    assert main(["world", "--kind", "procedural", "--subsets", "ms3", "--clips", "3", "--size", "32",
                 "--out", str(out), "--quiet"]) == 0
    before = (out / "world.json").read_text()
    capsys.readouterr()
    assert main(["pipeline", "--out", str(out), "--no-notebooks", "--figures", str(tmp_path / "figures")]) == 2
    err = capsys.readouterr().err
    assert "another world" in err and "--rebuild" in err
    assert (out / "world.json").read_text() == before  # left as it was
    assert not (tmp_path / "figures").exists()


def test_pipeline_checks_another_model_config_before_any_work(tmp_path, capsys):
    """`avs pipeline --config FILE`: a missing file is named before the world is built, and a run
    with another config is never quoted by the README."""
    out = tmp_path / "w"
    assert main(["pipeline", "--out", str(out), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert not out.exists()
    assert main(["pipeline", "--out", str(out), "--config", str(ROOT / "configs" / "every_lever.yaml"),
                 "--update-readme"]) == 2
    assert "not quoted by the README" in capsys.readouterr().err
    assert not out.exists()


def test_pipeline_gives_another_config_to_the_notebooks_that_share_the_model():
    from avs_lib.experiments.pipeline import config_parameters

    notebooks = ROOT / "notebooks"
    other = ROOT / "configs" / "every_lever.yaml"
    default = ROOT / "configs" / "tiny_world.yaml"
    assert config_parameters(notebooks / "05_training.py", default) == {}  # the default, named: as if not given
    assert config_parameters(notebooks / "00_data_tour.py", other) == {}  # it trains nothing
    assert config_parameters(notebooks / "01_semantic_memory.py", other) == {}
    for name in ("02_derivation", "03_elimination", "04_tsne_probe", "05_training"):
        assert config_parameters(notebooks / f"{name}.py", other) == {"config_file": str(other)}
        assert config_parameters(notebooks / f"{name}.py", None) == {}  # the main job: params.json as before


def test_every_lever_config_is_the_run_its_measurements_were_taken_with():
    """configs/every_lever.yaml names the settings of figures/decoder_pixel/'s ten-epoch model, so a
    run of the file is the same run (model store, resume, `avs compare`)."""
    from avs_lib.core.config import load_config
    from avs_lib.training.runs import config_differences

    config = load_config(ROOT / "configs" / "every_lever.yaml")
    measured = json.loads((ROOT / "figures" / "decoder_pixel" / "model_outline_10_epochs" / "config.json").read_text())
    assert config_differences(config, measured) == {}
    assert config_differences(config, load_config(ROOT / "configs" / "tiny_world.yaml"))  # not the main job's
