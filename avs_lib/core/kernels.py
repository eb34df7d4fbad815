"""Portable CPU kernels: one run gives the same numbers on every x86-64 CPU that has AVX2.

torch (ATen), oneDNN, MKL, NumPy and OpenBLAS each choose their CPU kernels at run time by the
instructions the CPU offers, and kernels of different widths add in different orders, so they
round differently. The committed main-job run was made on a CPU with AVX512; a fresh clone's
``make run`` on a CPU with AVX2 only differed from it in 106 of its 153 numbers (about 1-2 J&F
points). Capping every library at AVX2 makes an AVX512 machine run the kernels an AVX2 machine
runs: a colleague's rerun then reproduces a run whatever x86 CPU either of them has.

Each library reads its own environment variable, once, when it first needs it (NumPy when it is
imported, MKL and oneDNN at their first call, ATen at its first vectorised kernel), so the caps
must be in the environment before any of them is imported. ``avs`` (``avs_lib.cli``) sets them
in its own process first thing, and every notebook kernel the workbench starts gets them in its
environment (``avs_lib.experiments.notebooks``). Code that imports ``avs_lib`` as a library
gets native kernels unless it sets them itself (``portable_kernel_env`` gives the variables).

Which variable moves which numbers, measured on this project's AMD EPYC (AVX2) by lowering each
library to SSE4 alone (a 2-step DDESeg training, a log-mel, matrix products; hashes of the
results): ATen's cap changed torch's reductions, exp and matmul; oneDNN's cap, the convolutions;
``MKL_CBWR`` changed the model's step even at AVX2, because MKL's default path on this AMD CPU is
not its AVX2 branch; NumPy's and OpenBLAS's changed librosa's log-mel. Every one of them matters.

The caps are defaults: a variable the user has set is kept, and ``AVS_NATIVE_KERNELS=1`` turns
them all off (native kernels: on an AVX512 CPU faster for some layers, reproducible only on the
same kind of CPU). Not covered: CPUs without AVX2 (the caps cannot raise a CPU; the run report
names the kernels a run used), other architectures (ARM), other package versions, thread counts
(MKL's reproducibility needs the same number of threads: a config's ``threads`` fixes it, and
by default torch takes one per core), and
``cpu_bf16=true``, whose bf16 arithmetic wants AVX512-BF16 kernels and gets AVX2 emulation.
"""
from __future__ import annotations

import os
from typing import Mapping, MutableMapping

NATIVE_SWITCH = "AVS_NATIVE_KERNELS"

# Every library caps at the same level, AVX2 (x86-64-v3): the widest that every CPU sold since
# about 2015 has. Each value is in the spelling its library reads.
PORTABLE_KERNELS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",     # torch's own vectorised kernels (torch/csrc: cpu capability)
    "ONEDNN_MAX_CPU_ISA": "AVX2",      # oneDNN (torch's convolutions, channels_last)
    "MKL_CBWR": "AVX2",                # MKL's conditional numerical reproducibility, its AVX2 branch
    "OPENBLAS_CORETYPE": "Haswell",    # OpenBLAS in NumPy's and SciPy's wheels (Haswell = AVX2 kernels)
    # NumPy's dispatched loops above x86-64-v3: the 2.4+ names, then the older ones (a name this
    # NumPy does not dispatch costs an ImportWarning, hidden by default, and nothing else)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_KNL AVX512_KNM "
                                "AVX512_SKX AVX512_CLX AVX512_CNL",
}


def native_kernels_asked(environ: Mapping[str, str]) -> bool:
    """Whether ``AVS_NATIVE_KERNELS`` asks for native kernels (1, true, yes, on)."""
    return environ.get(NATIVE_SWITCH, "").strip().lower() in {"1", "true", "yes", "on"}


def portable_kernel_env(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` with each cap of ``PORTABLE_KERNELS`` added where ``environ`` does not
    set that variable (a value the user set is kept); an unchanged copy where
    ``AVS_NATIVE_KERNELS=1``."""
    env = dict(environ)
    if not native_kernels_asked(env):
        for name, value in PORTABLE_KERNELS.items():
            env.setdefault(name, value)
    return env


def use_portable_kernels(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put the caps into this process's environment (``os.environ`` unless given), where unset;
    returns the kernel variables now in effect. Call it before NumPy and torch are imported: a
    library that has already read its variable keeps the kernels it chose."""
    environ = os.environ if environ is None else environ
    for name, value in portable_kernel_env(environ).items():
        if name not in environ:
            environ[name] = value
    return kernel_settings(environ)


def kernel_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The kernel variables ``environ`` sets (the caps and the native switch), for a run's record."""
    return {name: environ[name] for name in (*PORTABLE_KERNELS, NATIVE_SWITCH) if name in environ}


ATEN_LEVELS = ("DEFAULT", "AVX2", "AVX512")  # torch's x86 kernel levels, narrowest first


def capped_capability(capability: str, environ: Mapping[str, str]) -> str:
    """The kernels torch runs in a process started with ``environ`` on a CPU where torch chose
    ``capability`` uncapped (``torch.backends.cpu.get_cpu_capability()``): the lower of the two on
    x86, ``capability`` where either is not an x86 level."""
    cap = environ.get("ATEN_CPU_CAPABILITY", "").upper()
    if cap in ATEN_LEVELS and capability in ATEN_LEVELS:
        return min(cap, capability, key=ATEN_LEVELS.index)
    return capability
