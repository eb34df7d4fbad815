"""Widgets that papermill can execute without stalling.

An ipywidgets ``Output`` widget (and ``interact``, built on it) makes nbclient send the captured
outputs back on the shell channel while it polls that channel for the cell's reply; the poll can
then miss its wake-up and return only at its timeout (jupyter/nbclient#312). The cell looks
finished and the run succeeds, just a timeout later: on this project's 2-core machine under load,
3 of 25 runs of notebook 00 with the old Output-based clip browser waited out a 15 s cell timeout.
A long timeout cannot catch this, so the proof is by repetition with a short one: a stalled run
takes at least its cell timeout, a healthy one a few seconds.
"""
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
CELL_TIMEOUT = 30  # seconds; a healthy run of the cells below takes about 3-6 s here
REPEATS = 20  # at a 1-in-8 stall rate, 20 runs miss every stall with probability 0.07


def test_no_output_widget_or_interact_in_library_or_notebooks():
    sources = list((ROOT / "avs_lib").rglob("*.py")) + list((ROOT / "notebooks").glob("*.py"))
    # widgets.Output(...), interact / interactive / interact_manual called, decorated or imported
    pattern = re.compile(r"\bOutput\s*\(|\bimport\b.*\bOutput\b|(?<!\w)interact(ive|_manual)?\s*\(|@(\w+\.)?interact"
                         r"|\bimport\b.*\binteract")
    for stalls in ("widgets.interact(f, k=1)", "@interact", "@widgets.interact(x=1)", "w = widgets.interactive(f)",
                   "from ipywidgets import Output", "out = widgets.Output()", "from ipywidgets import interact"):
        assert pattern.search(stalls), stalls  # the pattern catches every spelling
    offenders = [f"{p.relative_to(ROOT)}:{n + 1}" for p in sources
                 for n, line in enumerate(p.read_text().splitlines())
                 if not line.lstrip().startswith("#") and pattern.search(line)]
    assert not offenders, f"Output/interact widgets stall papermill runs: {offenders}"


def _widget_tree(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _widget_tree(child)


def test_clip_browser_builds_from_passive_widgets(small_world):
    import ipywidgets as widgets

    from avs_lib.viz.widgets import clip_browser

    _, _, root = small_world
    browser = clip_browser(root)
    kinds = {type(w) for w in _widget_tree(browser)}
    assert widgets.Output not in kinds
    subset, split, clip = browser.children[0].children
    image, audio, notes = browser.children[1:]
    for name in subset.options:  # every subset shows a clip with frames, audio and its sources
        subset.value = name
        assert clip.options, name
        assert image.value[:8] == b"\x89PNG\r\n\x1a\n" and audio.value[:4] == b"RIFF", name
        assert "<table>" in notes.value, name
    subset.value = "msmi"
    assert clip.value.startswith("msmi_")  # world clip names, not VPO image ids
    assert "sidecar groups them" in notes.value
    subset.value, split.value = "s4", "train"
    assert "frame 1 only" in notes.value  # AVSBench's S4 training convention is explained


@pytest.mark.slow
def test_widget_cells_never_stall_under_papermill(procedural_world, tmp_path):
    import papermill

    _, root = procedural_world
    nb = new_notebook(cells=[new_code_cell(f"from avs_lib.viz.widgets import clip_browser\nroot = {str(root)!r}"),
                             new_code_cell("clip_browser(root)"),
                             new_code_cell("browser = clip_browser(root)\nbrowser.children[0].children[0].value = 'msmi'\n"
                                           "browser")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    seconds = []
    for i in range(REPEATS):
        start = time.monotonic()
        papermill.execute_notebook(nb, str(tmp_path / f"run{i}.ipynb"), kernel_name="python3", progress_bar=False,
                                   execution_timeout=CELL_TIMEOUT, cwd=str(tmp_path))
        seconds.append(time.monotonic() - start)
    stalled = [round(s, 1) for s in seconds if s >= CELL_TIMEOUT]
    assert not stalled, f"{len(stalled)} of {REPEATS} runs waited out the {CELL_TIMEOUT} s cell timeout: {seconds}"
    executed = nbformat.read(tmp_path / "run0.ipynb", as_version=4)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in executed.cells for o in c.get("outputs", []))
