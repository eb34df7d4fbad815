"""Every notebook runs through papermill (`avs run`) with tiny parameters; pairs are in sync; no outputs
are committed; runs are never overwritten and failures are kept."""
import json
from pathlib import Path

import jupytext
import nbformat
import pytest

from avs_lib.core.config import load_config
from avs_lib.core.paths import workbench_path
from avs_lib.experiments.notebooks import RunExists, notebook_parameters, run_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


TINY = {"image_size": 64, "visual_pretrain_steps": 4}  # the default 600 batches take minutes; 4 exercise them
CASES = {
    "00_data_tour": ({}, {"clips", "frames"}, ["clip_masks.png", "clip_spectrogram.png"]),
    "01_semantic_memory": ({"k": 2, "m": 2}, {"nearest_centroid_accuracy", "classes"}, ["memory_map.png"]),
    "02_derivation": ({"train_epochs": 1, **TINY}, {"recall_at_K", "recall_curve"}, ["derivation_recall.png"]),
    "03_elimination": ({"train_epochs": 1, **TINY}, {"auc", "auc_by_tau"}, ["assignment_maps.png", "elimination_roc.png"]),
    "04_tsne_probe": ({"train_epochs": 1, "perplexity": 5, **TINY}, {"probe_f1"}, ["tsne.png", "umap.png", "tsne.html"]),
    "05_training": ({"epochs": 1, **TINY}, {"test", "table", "headroom", "pointing", "late_gain", "late_trend",
                                                     "resolution_bound", "attention_anatomy",
                                                     "attention_interventions", "peak_places",
                                                     "attention_blanking"},
                    ["training_curves.png", "qualitative.png", "headroom.png", "attention_anatomy.png",
                     "peak_places.png", "blanking.png"]),
    "06_avsac": ({"epochs": 1, **TINY}, {"table"}, []),
}


def _elimination_values(metrics: dict, run: Path) -> None:
    """Notebook 03's numbers agree with each other and its findings are stated."""
    # the pooled AUC of the combined scores is elimination_auc's: two computations, one number
    if metrics["auc"] is not None:
        assert metrics["auc"] == pytest.approx(metrics["pooled_auc"]["combined"])
    assert metrics["positives"] + metrics["negatives"] > 0
    assert set(metrics["auc_by_tau"]) == {"0.25", "1.0", "4.0"}  # the notebook's default taus
    for stage, paired in metrics["within_frame"].items():
        if paired["auc"] is None:
            continue
        low, high = paired["ci95"]
        assert 0 <= low <= high <= 1 and 0 <= paired["auc"] <= 1, (stage, paired)
        assert paired["pairs"] >= paired["frames"] >= paired["clips"] > 0, (stage, paired)
    for stage, spread in metrics["spread"].items():
        assert 0 <= spread["std"] <= spread["range"] + 1e-12, (stage, spread)
    for kind in ("derived", "enhanced"):
        separation = metrics["token_separation"][kind]
        assert separation["ratio"] == pytest.approx(separation["within_frame"] / separation["between_frames"])
    executed = nbformat.read(run / "03_elimination.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "within-frame AUC" in printed and "The pooled elimination AUC" in printed, printed[-2000:]


VALUE_CHECKS = {"03_elimination": _elimination_values}


def test_every_notebook_has_a_case():
    assert sorted(p.stem for p in ALL) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_executes(name, notebook_world, tmp_path):
    parameters, keys, figures = CASES[name]
    run = run_notebook(NOTEBOOKS / f"{name}.py", {"data_root": str(notebook_world), **parameters}, name=name,
                       runs_dir=tmp_path, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert keys <= set(metrics), metrics.keys()
    for figure in figures:
        assert (run / "figures" / figure).stat().st_size > 1000, figure
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    if name in VALUE_CHECKS:
        VALUE_CHECKS[name](metrics, run)
    params = json.loads((run / "params.json").read_text())
    assert params["data_root"] == str(notebook_world) and "run_dir" in params
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] and "device" in env
    if name == "02_derivation":
        executed = nbformat.read(run / f"{name}.ipynb", as_version=4)
        assert "widgets" not in executed.metadata  # saved widget state would embed anywidget's JS bundle
        assert 0 <= metrics["recall_at_K"] <= 1
        assert metrics["recall_curve"][-1] == pytest.approx(1.0)  # K = all classes covers everything
    if name == "05_training":
        assert {row["evaluation"] for row in metrics["table"]} >= {"per_frame", "avsbench", "dataset"}
        assert set(metrics["headroom"]) == {"floor", "model", "oracle"}
        for row in metrics["headroom"].values():
            low, high = row["ci95"]
            assert 0 <= low <= row["JF"] <= high <= 1
        # the window's model row is the test evaluation of the same checkpoint
        assert metrics["headroom"]["model"]["JF"] == pytest.approx(metrics["test"]["JF"], abs=1e-6)
        assert 0 <= metrics["pointing"]["stage 1"] <= 1 and metrics["pointing"]["objects"] > 0
        assert 0 < metrics["pointing"]["chance"] < 1
        # every object's peak lands somewhere, chance shares the whole frame
        places = metrics["peak_places"]
        assert sum(places["stage 1"].values()) == pytest.approx(1) and sum(places["chance"].values()) == pytest.approx(1)
        assert places["objects"] == metrics["pointing"]["objects"]
        stages = [stage for stage in metrics["attention_anatomy"].values() if stage["objects"]]
        assert stages  # stage 1's grid is fine enough for some object
        # the main config's tokens ask (fusion_query: audio): a cell's weight from a token is a write-back
        # weight in [0, 1], and there is no null key whose share could be read
        assert load_config(workbench_path("configs/tiny_world.yaml")).switches["fusion_query"] == "audio"
        for stage in stages:
            assert all(0 <= stage[k] <= 1 for k in ("own_inside", "own_outside", "other_inside"))
            assert stage["null_inside"] is None and stage["null_outside"] is None
        # the unedited row is the test evaluation of the same checkpoint
        interventions = metrics["attention_interventions"]
        assert interventions["as trained"]["JF"] == pytest.approx(metrics["test"]["JF"], abs=1e-6)
        assert len(interventions) == 3
        blanking = metrics["attention_blanking"]
        assert blanking["as trained"]["JF"] == pytest.approx(metrics["test"]["JF"], abs=1e-6)
        assert len(blanking) == 4 and all(0 <= row["cells_blanked"] < 1 for row in blanking.values())
        assert blanking["sounding boxes: blanked"]["cells_blanked"] > 0  # some sounding box covers half a cell
        # the truth at the decoder's resolution (EfficientNet-Lite0: stride 4) bounds the ceiling from above
        bound = metrics["resolution_bound"]
        assert bound["stride"] == 4 and metrics["headroom"]["oracle"]["JF"] < bound["JF"] <= 1


@pytest.mark.parametrize("name", ["02_derivation", "03_elimination", "04_tsne_probe", "05_training"])
def test_notebook_executes_on_the_every_lever_config(name, notebook_world, tmp_path):
    """`avs pipeline --config configs/every_lever.yaml` gives notebooks 02-05 that config: training
    clips composed fresh, the pixel-reading decoder stage (stride 1), the outline loss, the tokens asking."""
    parameters, keys, figures = CASES[name]
    config_file = workbench_path("configs/every_lever.yaml")
    run = run_notebook(NOTEBOOKS / f"{name}.py", {"data_root": str(notebook_world), **parameters,
                                                  "config_file": str(config_file)},
                       name=name, runs_dir=tmp_path, progress=False)
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    assert json.loads((run / "params.json").read_text())["config_file"] == str(config_file)
    metrics = json.loads((run / "metrics.json").read_text())
    assert keys <= set(metrics), metrics.keys()
    for figure in figures:
        assert (run / "figures" / figure).stat().st_size > 1000, figure
    # the model the notebook read was trained with the config: in the world's model store, its record says so
    stores = [json.loads(c.read_text()) for c in (notebook_world / "cache" / "models").glob("*/config.json")]
    assert any(s["switches"].get("decoder_stride") == 1 and s["train_clips"] == "fresh" and s["outline_weight"] == 2
               for s in stores)
    if name == "05_training":
        assert metrics["resolution_bound"]["stride"] == 1  # the decoder predicts at the frame's resolution
        assert set(metrics["headroom"]) == {"floor", "model", "oracle"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_pairs_in_sync_and_without_outputs(path):
    paired = path.with_suffix(".ipynb")
    assert paired.exists(), f"{paired} missing: run `jupytext --sync {path}`"
    text, stored = jupytext.read(path), nbformat.read(paired, as_version=4)
    assert [(c.cell_type, c.source) for c in text.cells] == [(c.cell_type, c.source) for c in stored.cells], \
        f"{path.name} and {paired.name} differ: run `jupytext --sync {path}`"
    for cell in stored.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{paired.name} carries outputs"
    tagged = [c for c in text.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert "data_root" in notebook_parameters(path) and "run_dir" in notebook_parameters(path)


def test_runs_are_never_overwritten_and_failures_are_kept(tmp_path):
    notebook = tmp_path / "boom.py"
    notebook.write_text('# %% tags=["parameters"]\nfail = True\nrun_dir = "."\n\n# %%\nprint("started")\n'
                        'assert not fail, "asked to fail"\n')
    with pytest.raises(Exception):
        run_notebook(notebook, {}, name="first", runs_dir=tmp_path / "runs", progress=False)
    status = json.loads((tmp_path / "runs" / "first" / "status.json").read_text())
    assert status["status"] == "failed" and "asked to fail" in status["error"]
    executed = nbformat.read(tmp_path / "runs" / "first" / "boom.ipynb", as_version=4)
    assert any("started" in str(cell.get("outputs", "")) for cell in executed.cells)
    with pytest.raises(RunExists):
        run_notebook(notebook, {"fail": False}, name="first", runs_dir=tmp_path / "runs", progress=False)
    run_notebook(notebook, {"fail": False}, name="second", runs_dir=tmp_path / "runs", progress=False)
    with pytest.raises(ValueError, match="no parameters"):
        run_notebook(notebook, {"nope": 1}, name="third", runs_dir=tmp_path / "runs", progress=False)


def test_a_cell_timeout_is_asked_for_and_fails_the_run_by_name(tmp_path, capsys):
    from avs_lib.cli import main

    notebook = tmp_path / "slow.py"
    notebook.write_text('# %% tags=["parameters"]\nseconds = 4.0\nrun_dir = "."\n\n# %%\nimport time\n'
                        'time.sleep(seconds)\nprint("slept")\n')
    runs = tmp_path / "runs"
    assert main(["run", str(notebook), "--name", "limited", "--runs-dir", str(runs), "--quiet",
                 "--cell-timeout", "1"]) == 1
    assert "cell timeout of 1.0 s" in capsys.readouterr().err
    status = json.loads((runs / "limited" / "status.json").read_text())
    assert status["status"] == "failed" and "cell timeout" in status["error"]
    # without the option a cell longer than that limit finishes
    assert main(["run", str(notebook), "--name", "free", "--runs-dir", str(runs), "--quiet"]) == 0
    assert json.loads((runs / "free" / "status.json").read_text())["status"] == "done"


def test_sweep_and_report(tmp_path, capsys):
    from avs_lib.cli import main

    notebook = tmp_path / "toy.py"
    notebook.write_text('# %% tags=["parameters"]\nx = 1\nseed = 0\nrun_dir = "."\n\n# %%\nimport json, pathlib\n'
                        'pathlib.Path(run_dir, "metrics.json").write_text(json.dumps({"J": x / 10 + seed / 100, '
                        '"F": 0.5, "JF": 0.3}))\n')
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"notebook: {notebook}\nname: toy\ngrid:\n  x: [1, 2]\n  seed: [0, 2]\n")
    runs = tmp_path / "runs"
    assert main(["sweep", str(grid), "--parallel", "2", "--runs-dir", str(runs)]) == 0
    assert sorted(p.name for p in runs.iterdir()) == ["toy_x=1_seed=0", "toy_x=1_seed=2", "toy_x=2_seed=0", "toy_x=2_seed=2"]
    assert "exists" in (capsys.readouterr(), main(["sweep", str(grid), "--runs-dir", str(runs)]), capsys.readouterr().out)[2]
    assert main(["report", "--runs-dir", str(runs), "--by", "param.x", "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report.md").read_text()
    # x=1: J = 0.10 and 0.12 -> 11.0 ± 1.4 (percent); x=2: 21.0 ± 1.4
    assert "11.0 ± 1.4" in text and "21.0 ± 1.4" in text
    assert (tmp_path / "report.csv").exists() and (tmp_path / "report_runs.csv").exists()


def test_same_parameters_give_identical_metrics(notebook_world, tmp_path):
    parameters = {"data_root": str(notebook_world), "train_epochs": 1, **TINY}
    first = run_notebook(NOTEBOOKS / "02_derivation.py", parameters, name="a", runs_dir=tmp_path, progress=False)
    second = run_notebook(NOTEBOOKS / "02_derivation.py", parameters, name="b", runs_dir=tmp_path, progress=False)
    assert json.loads((first / "metrics.json").read_text()) == json.loads((second / "metrics.json").read_text())


def test_avs_run_names_the_failing_cell_and_a_missing_world(tmp_path, capsys):
    from avs_lib.cli import main

    notebook = tmp_path / "boom.py"
    notebook.write_text('# %% tags=["parameters"]\nrun_dir = "."\n\n# %%\nx = 1\n\n# %%\nraise KeyError("no such clip")\n')
    assert main(["run", str(notebook), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 1
    err = capsys.readouterr().err
    # In [4] of the partial notebook: the parameters cell, the one papermill injects, x = 1, then this
    assert "cell [4]" in err and "KeyError" in err and "no such clip" in err and "partial notebook" in err
    assert "Traceback" not in err
    missing = tmp_path / "nowhere"
    assert main(["run", str(NOTEBOOKS / "00_data_tour.py"), "-p", "data_root", str(missing),
                 "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "make run" in err and "avs world" in err


def test_environment_names_the_cpu_and_what_was_dirty(tmp_path):
    from avs_lib.experiments.notebooks import environment

    env = environment()
    assert env["device"].startswith("cpu (") and "unknown" not in env["device"]
    assert isinstance(env["cpu_kernels"], str) and env["cpu_kernels"].isupper()  # e.g. AVX2, AVX512
    assert isinstance(env["dirty_code"], list) and env["git_dirty"] == bool(env["dirty_code"])
    assert not any(p.startswith(("papermill_runs/", "figures/")) for p in env["dirty_code"])


def test_run_report_puts_readme_numbers_beside_the_run(tmp_path):
    from avs_lib.experiments.pipeline import write_run_report
    from avs_lib.experiments.readme import readme_block, readme_numbers

    batch = tmp_path / "main-x"
    for name, metrics in {"01_a": {"accuracy": 0.5, "nested": {"auc": 0.75}, "curve": [1, 2]},
                          "02_b": {"recall": 0.25}}.items():
        (batch / name / "figures").mkdir(parents=True)
        (batch / name / "metrics.json").write_text(json.dumps(metrics))
        (batch / name / "status.json").write_text(json.dumps({"status": "done", "seconds": 1.0}))
        (batch / name / "figures" / "plot.png").write_bytes(b"png")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n" + readme_block(batch) + "\nrest\n")
    assert readme_numbers(readme) == {("01_a", "accuracy"): "0.5", ("01_a", "nested.auc"): "0.75",
                                      ("02_b", "recall"): "0.25"}
    (batch / "02_b" / "metrics.json").write_text(json.dumps({"recall": 0.3}))
    report = write_run_report(batch, readme).read_text()
    assert "| `accuracy` | 0.5 | 0.5 |" in report and "| `recall` | 0.3 | 0.25 (differs) |" in report
    assert '<img src="01_a/figures/plot.png"' in report and "(01_a/01_a.ipynb)" in report
    assert "curve" not in report
    # `avs pipeline --update-readme`: the README quotes the run, and the report compares with that
    from avs_lib.experiments.pipeline import quote_run_in_readme

    report = quote_run_in_readme(batch, readme).read_text()
    assert readme_numbers(readme)[("02_b", "recall")] == "0.3" and readme.read_text().startswith("intro\n")
    assert "| `recall` | 0.3 | 0.3 |" in report and "differs" not in report
    # a notebook run with another model config than the main job's is not set against the README's numbers
    (batch / "02_b" / "params.json").write_text(json.dumps({"config_file": "configs/every_lever.yaml"}))
    (batch / "02_b" / "metrics.json").write_text(json.dumps({"recall": 0.9}))
    report = write_run_report(batch, readme).read_text()
    assert "| `recall` | 0.9 |  |" in report and "not compared" in report and "differs" not in report
    (batch / "02_b" / "params.json").write_text(json.dumps({"config_file": "configs/tiny_world.yaml"}))
    assert "| `recall` | 0.9 | 0.3 (differs) |" in write_run_report(batch, readme).read_text()


def _committed_main_runs(root):
    """The main-job runs git tracks (a local `make run` before `make test` adds an untracked one);
    every main-* folder where the tree is not a git checkout."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "papermill_runs"], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0 or not listed.stdout.strip():
        return sorted((root / "papermill_runs").glob("main-*"))
    names = {Path(p).parts[1] for p in listed.stdout.splitlines() if len(Path(p).parts) > 2}
    return sorted(root / "papermill_runs" / n for n in names if n.startswith("main-"))


def test_readme_numbers_are_the_committed_runs():
    from avs_lib.experiments.readme import headline_numbers, readme_numbers

    root = NOTEBOOKS.parent
    quoted = readme_numbers(root / "README.md")
    assert quoted, "README.md has no run-numbers table: `avs pipeline --update-readme` writes it"
    runs = _committed_main_runs(root)
    assert len(runs) == 1, f"commit exactly one main-job run, found {[r.name for r in runs]}"
    text = (root / "README.md").read_text()
    assert f"`{runs[0].relative_to(root).as_posix()}`" in text  # the table names the run it quotes
    from avs_lib.experiments.readme import format_number

    for (notebook, key), value in quoted.items():
        metrics = json.loads((runs[0] / notebook / "metrics.json").read_text())
        assert format_number(headline_numbers(metrics)[key]) == value, (notebook, key)
