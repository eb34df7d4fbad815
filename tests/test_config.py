"""Configs are checked when they are read: a wrong key, type or choice names itself, its source and
what is allowed, before any data is touched."""
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from avs_lib.core.config import check_values, load_config, TrainConfig
from avs_lib.core.errors import ConfigError
from avs_lib.models import DDESegConfig


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, named, allowed", [
    ("epoch: 3\n", "'epoch'", "did you mean 'epochs'"),
    ("epochs: two\n", "'epochs'", "an integer"),
    ("epochs: 2.5\n", "'epochs'", "an integer"),
    ("model: ddseg\n", "'model'", "ddeseg, baseline, avsac"),
    ("layout: ms4\n", "'layout'", "s4, ms3"),
    ("flip: maybe\n", "'flip'", "true or false"),
    ("switches:\n  elimination: gumble\n", "'switches.elimination'", "gumbel_ca_fc"),
    ("switches:\n  tua: 0.5\n", "'switches.tua'", "did you mean 'switches.tau'"),
    ("switches:\n  k: 4\n", "'switches.k'", "top-level keys k, m and audio_dim"),
    ("batch_size: 0\n", "'batch_size'", "positive"),
])
def test_bad_file_values_name_key_file_and_allowed(tmp_path, text, named, allowed):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert named in message and allowed in message and str(path) in message


def test_override_is_named_as_the_source():
    with pytest.raises(ConfigError, match=r"override 'epochs=two'.*'epochs' must be an integer"):
        load_config(None, ["epochs=two"])


def test_yaml_float_spelled_as_string_is_the_number(tmp_path):
    # YAML 1.1 reads 1e-3 (no dot) as a string; a float field takes the number it spells
    config = load_config(_write(tmp_path, "lr: 1e-3\nmin_lr: 1.0e-4\n"), ["weight_decay=5e-2"])
    assert config.lr == pytest.approx(0.001) and config.min_lr == pytest.approx(1e-4)
    assert config.weight_decay == pytest.approx(0.05)


def test_broken_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "epochs: 3\nlr: [1e-3\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(path)


def test_cli_rejects_bad_config_before_reading_data(tmp_path):
    # data_root does not exist: a config error must come first, with no traceback
    path = _write(tmp_path, f"data_root: {tmp_path / 'nowhere'}\nepochs: two\n")
    done = subprocess.run([sys.executable, "-m", "avs_lib.cli", "train", "--config", str(path),
                           f"out={tmp_path / 'out'}"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "'epochs' must be an integer" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


@given(st.integers(min_value=1, max_value=10_000))
def test_positive_integers_pass_unchanged(n):
    assert check_values(TrainConfig, {"epochs": n, "batch_size": n}, "test") == {"epochs": n, "batch_size": n}


@given(st.text(min_size=1, max_size=12).filter(lambda s: s not in DDESegConfig.CHOICES["elimination"]))
def test_any_unknown_scheme_is_refused(name):
    with pytest.raises(ConfigError, match="choose one of"):
        check_values(DDESegConfig, {"elimination": name}, "test")


def test_every_shipped_config_reads():
    from pathlib import Path

    paths = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
    assert {"tiny_world.yaml", "ablation_world.yaml", "ddeseg_b5_ms3.yaml"} <= {p.name for p in paths}
    for path in paths:
        assert load_config(path).model in ("ddeseg", "baseline", "avsac")


def test_keyword_values_are_checked_and_named(tmp_path):
    from pathlib import Path

    config = load_config(data_root=Path("data/x"), epochs=3, switches={"num_tokens": 4})
    assert config.data_root == "data/x" and config.epochs == 3 and config.switches == {"num_tokens": 4}
    with pytest.raises(ConfigError, match=r"argument epochs='two'.*an integer"):
        load_config(epochs="two")
    with pytest.raises(ConfigError, match=r"'switches.num_tokenz'.*did you mean 'switches.num_tokens'"):
        load_config(switches={"num_tokenz": 4})


def test_config_files_resolve_from_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a notebook's kernel or a script started elsewhere
    assert load_config("configs/ablation_world.yaml").data_root == "data/ablation_world"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/no_such_config.yaml")


def test_ablation_without_its_world_says_how_to_build_it(tmp_path, capsys):
    from avs_lib.cli import main

    assert main(["ablation", f"data_root={tmp_path / 'nowhere'}", f"--out={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "the ablation's world does not exist" in err and "make run" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
