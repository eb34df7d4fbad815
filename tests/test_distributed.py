"""`avs train` under torchrun: two agents with a c10d rendezvous (two "nodes" on this machine, gloo)
match one process, and an elastic restart after a worker is killed mid-epoch resumes from last.pt
and ends with the weights of an uninterrupted run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import free_port
from avs_lib.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A tiny world, its warm cache, and a single-process run of 2 epochs to compare with."""
    from avs_lib.world.compose import WorldConfig
    from avs_lib.world.write import write_world

    root = tmp_path_factory.mktemp("dist")
    write_world(WorldConfig(kind="procedural", subsets=("s4",), clips=120, size=32), root / "a", progress=False)
    write_world(WorldConfig(kind="procedural", subsets=("ms3",), clips=8, size=32), root / "b", progress=False)
    os.replace(root / "b" / "Multi-sources", root / "a" / "Multi-sources")
    # GroupNorm in the decoder: BatchNorm statistics over a rank's half batch would differ from one process
    args = [f"data_root={root / 'a'}", "layout=ms3", "image_size=32", "batch_size=4", "encoder_epochs=1", "k=2", "m=2",
            "progress=false", f"cache_dir={root / 'cache'}", "device=cpu", "epochs=2", "model=baseline", "ablation=null",
            "switches.decoder_norm=group", "switches.decoder_dropout=0.0", "threads=1", "tracking=none"]
    assert main(["train", *args, f"out={root / 'single'}"]) == 0  # also fills the cache the workers read
    return root, args


def _torchrun(args: list[str], out: Path, nnodes: int, nproc: int, extra_env: dict | None = None,
              max_restarts: int = 0) -> list[subprocess.CompletedProcess]:
    """``nnodes`` torchrun agents on this machine (one c10d rendezvous), each with ``nproc`` workers
    running ``avs train``; returns each agent's completed process."""
    port = free_port()
    # a rendezvous store per round: torchrun's shared store keeps the previous attempt's addresses,
    # which a restarted group can read (README, "Running on a cluster")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **(extra_env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", f"test-{port}",
               "--max-restarts", str(max_restarts), "-m", "avs_lib.cli", "train", *args, f"out={out}"]
    agents = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(nnodes)]
    done = []
    try:
        for agent in agents:
            stdout, stderr = agent.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(agent.args, agent.returncode, stdout, stderr))
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    return done


def _weights(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=False)["model"]


def _losses(run: Path) -> np.ndarray:
    return np.array([json.loads(line)["losses"] for line in (run / "log.jsonl").read_text().splitlines()])


@pytest.fixture(scope="module")
def two_nodes(setting):
    root, args = setting
    agents = _torchrun(args, root / "two_nodes", nnodes=2, nproc=1)
    for agent in agents:
        assert agent.returncode == 0, agent.stderr[-3000:]
    return root / "two_nodes", agents


def test_two_torchrun_agents_match_one_process(setting, two_nodes):
    root, _ = setting
    out, agents = two_nodes
    assert sum("test (per_frame)" in a.stdout for a in agents) == 1  # rank 0 reports, the other rank is quiet
    np.testing.assert_allclose(_losses(out), _losses(root / "single"), rtol=1e-4)
    single, multi = _weights(root / "single"), _weights(out)
    for name in single:
        torch.testing.assert_close(multi[name], single[name], rtol=1e-3, atol=1e-3)
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_elastic_restart_resumes_from_last_checkpoint(setting, two_nodes):
    """Two agents; rank 1 is SIGKILLed at step 1 of epoch 2 (after last.pt of epoch 1); torchrun
    restarts the group once and, with resume=true, it continues from last.pt to the uninterrupted
    run's weights."""
    root, args = setting
    out = root / "elastic"
    agents = _torchrun([*args, "resume=true"], out, nnodes=2, nproc=1, extra_env={"AVS_FAULT_KILL": "2:1:1"},
                       max_restarts=1)
    for agent in agents:
        assert agent.returncode == 0, agent.stderr[-3000:]
    assert (out / ".fault-injected").exists() and sum("exitcode: -9" in a.stderr for a in agents) == 1  # the kill
    # the restarted group read last.pt (killed in epoch 2, so it resumes after epoch 1), not a fresh start
    assert sum(f"resuming {out} from last.pt after epoch 1 of" in a.stdout + a.stderr for a in agents) == 1
    uninterrupted, restarted = _weights(two_nodes[0]), _weights(out)
    for name in uninterrupted:  # the same world size: the same arithmetic, bit for bit
        assert torch.equal(restarted[name], uninterrupted[name]), name
    np.testing.assert_array_equal(_losses(out), _losses(two_nodes[0]))
