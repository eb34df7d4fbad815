import hashlib
from pathlib import Path

from avs_lib.world.compose import WorldConfig
from avs_lib.world.write import write_world


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_byte_identical_files(tmp_path, procedural_world):
    cfg, first = procedural_world
    again = tmp_path / "again"
    write_world(cfg, again, progress=False, workers=2)  # a different process count must not matter
    a, b = _digest(first), _digest(again)
    assert a.keys() == b.keys() and len(a) > 100
    assert a == b


def test_another_seed_gives_another_world(tmp_path, procedural_world):
    cfg, first = procedural_world
    other = tmp_path / "other"
    write_world(WorldConfig(kind=cfg.kind, clips=cfg.clips, size=cfg.size, seed=cfg.seed + 1, subsets=("s4",)), other, progress=False)
    name = "Single-source/s4_meta_data.csv"
    assert (first / name).read_bytes() != (other / name).read_bytes()


def test_an_interactive_figure_gives_the_same_bytes_in_every_run(tmp_path):
    import plotly.graph_objects as go

    from avs_lib.viz.plots import write_interactive_html

    def figure():
        return go.Figure(go.Scatter(x=[0.0, 1.5], y=[2.0, -1.0], mode="markers", text=["clip a", "clip b"]))

    first = write_interactive_html(figure(), tmp_path / "one" / "tsne.html").read_bytes()
    second = write_interactive_html(figure(), tmp_path / "two" / "tsne.html").read_bytes()
    assert first == second  # plotly's own element id is random (uuid4) each time
    assert b"plotly.min.js" in first and len(first) < 100_000  # the shared script, not an embedded copy
