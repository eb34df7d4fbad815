import pytest

from avs_lib.world.assets import load_library, stamps_available
from avs_lib.world.compose import WorldConfig
from avs_lib.world.write import write_world

SMALL = dict(clips=7, size=48)  # 7 clips: 5 train, 1 val, 1 test per subset

KINDS = ["procedural", pytest.param("stamps", marks=pytest.mark.skipif(
    not stamps_available(), reason="tuxpaint-stamps-default / sonic-pi-samples not installed (make test installs them)"))]


@pytest.fixture(scope="session", params=KINDS)
def small_world(request, tmp_path_factory):
    """A small world of every subset, written once per asset library; returns (config, library, root)."""
    cfg = WorldConfig(kind=request.param, **SMALL)
    library = load_library(cfg.kind, cfg.sample_rate, warn_on_fallback=False)
    root = tmp_path_factory.mktemp(f"world_{request.param}")
    write_world(cfg, root, progress=False, library=library)
    return cfg, library, root


@pytest.fixture(scope="session")
def procedural_world(tmp_path_factory):
    cfg = WorldConfig(kind="procedural", **SMALL)
    root = tmp_path_factory.mktemp("world_procedural_b")
    write_world(cfg, root, progress=False)
    return cfg, root


@pytest.fixture(scope="session")
def notebook_world(tmp_path_factory):
    """s4 and ms3 at 32 px with 120 clips each: every class has single-source training clips for the memory."""
    root = tmp_path_factory.mktemp("nb_world")
    write_world(WorldConfig(kind="procedural", subsets=("s4", "ms3"), clips=120, size=32), root, progress=False)
    return root
