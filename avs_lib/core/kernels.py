"""Portable CPU kernels: one run meant to give the same numbers on x86-64 CPUs with and without AVX512.

torch (ATen), oneDNN, MKL, NumPy, OpenBLAS and numba each choose their CPU kernels at run time by
the instructions the CPU offers, and kernels of different widths add in different orders, so they
round differently. The committed main-job run of 2026-12-04 was made on a CPU with AVX512; a
fresh clone's ``make run`` on a CPU with AVX2 only differed from it in 106 of its 153 numbers
(about 1-2 J&F points) with the same code. Capping every library at AVX2 makes an AVX512 machine
run the kernels an AVX2 machine runs: with the caps (numba not yet among them), a fresh clone's
``make run`` on an AMD EPYC with AVX512 gave every number of the run made on an AMD EPYC with AVX2
only, and every PNG figure byte for byte (docs/reproducibility.md;
``benchmarks/kernel_fingerprint.py`` checks the kernels in 30 s).

Each library reads its own environment variable, once, when it first needs it (NumPy when it is
imported, MKL and oneDNN at their first call, ATen at its first vectorised kernel), so the caps
must be in the environment before any of them is imported. ``avs`` (``avs_lib.cli``) sets them
in its own process first thing, every notebook kernel the workbench starts gets them in its
environment (``avs_lib.experiments.notebooks``), and each notebook calls ``use_portable_kernels``
in its first cell, so a notebook opened by hand runs them too. Your own script gets them by
calling ``use_portable_kernels()`` before it imports NumPy or torch.

Measured on the AMD EPYC with AVX2 (Zen 2 or 3) that made the run ``main-20261205-082211``,
lowering each library alone to SSE4 (a 2-step DDESeg training, a log-mel, matrix products; hashes
of the results): ATen's cap changed torch's reductions, exp and matmul; oneDNN's, the model's step
(its convolutions); NumPy's and OpenBLAS's, librosa's log-mel. ``MKL_ENABLE_INSTRUCTIONS=SSE4_2``
changed nothing: MKL chooses its path on an AMD CPU otherwise. MKL's own reproducibility mode
(``MKL_CBWR``) does change it, but on a CPU not made by Intel only its ``COMPATIBLE`` (SSE2) branch
is fixed (Intel's documentation), and it cost 18 % of the default model's training frames/s there
(``benchmarks/bench_train.py``: 46.5 against 56.5), so it is not set: MKL stays capped by
``MKL_ENABLE_INSTRUCTIONS`` alone, which binds on Intel CPUs. Set ``MKL_CBWR=COMPATIBLE`` yourself
for MKL's guarantee at that price.

On an AMD EPYC with AVX512 (Zen 4), the native results of NumPy, OpenBLAS, librosa, numba and the
DDESeg steps differ from the capped ones, and the capped ones equal the AVX2 machine's (numba's:
equal to what numba compiles for a Zen 2 or Zen 3 host, emulated by its CPU name and features, for
the fingerprint's loop; the AVX2 reference predates numba's target).

The caps are defaults: a variable the user has set is kept, and ``AVS_NATIVE_KERNELS=1`` turns
them all off (native kernels: reproducible only on the same kind of CPU; on the AVX512 EPYC they
did not train the default model faster: 63.5 and 66.6 frames/s against 65.4 and 74.7 capped).
Not covered: CPUs without AVX2 (the caps cannot raise a CPU; the run report names the kernels a
run used), numba where Linux's ``/proc/cpuinfo`` is missing (untargeted there), other
architectures (ARM), other package versions, and thread counts (a config's ``threads`` fixes
them; by default torch takes one per core). With ``cpu_bf16=true`` the bf16 arithmetic gets AVX2
kernels, not AVX512-BF16 ones.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Mapping, MutableMapping

NATIVE_SWITCH = "AVS_NATIVE_KERNELS"

# Every library caps at the same level, AVX2 (x86-64-v3): the level of most x86 machines that
# train models, laptops included. Each value is in the spelling its library reads.
PORTABLE_KERNELS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",     # torch's own vectorised kernels (torch/csrc: cpu capability)
    "ONEDNN_MAX_CPU_ISA": "AVX2",      # oneDNN (torch's convolutions, channels_last)
    "MKL_ENABLE_INSTRUCTIONS": "AVX2", # MKL (torch's float32 matmul) on Intel CPUs; see above for AMD
    "OPENBLAS_CORETYPE": "Haswell",    # OpenBLAS in NumPy's and SciPy's wheels (Haswell = AVX2 kernels)
    # NumPy's dispatched loops above x86-64-v3: the 2.4+ names, then the older ones (a name this
    # NumPy does not dispatch costs an ImportWarning, hidden by default, and nothing else)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_KNL AVX512_KNM "
                                "AVX512_SKX AVX512_CLX AVX512_CNL",
}

# numba compiles UMAP's and pynndescent's loops (notebook 04) for the host CPU. Its variables name a
# target, not a ceiling: code compiled for Haswell runs Haswell's instructions on any CPU, and would
# stop with an illegal instruction on one without them (or warn on ARM). So they are set only on a
# CPU that has every Haswell instruction a compiler emits in user code (Linux's names below); every
# such CPU, AVX2 or AVX512, Intel or AMD, then compiles the same code. A CPU name alone keeps the
# host's features, AVX512 included, so the features are emptied, leaving Haswell's own (numba's
# on-disk cache keys compiled code by both). The two are one setting: where the user sets either,
# neither is set.
NUMBA_TARGET: dict[str, str] = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}
HASWELL_FLAGS = frozenset({"sse4_2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "abm", "movbe"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's instruction flags as Linux names them (``avx2``, ``avx512f``, ...); empty where
    ``/proc/cpuinfo`` cannot be read (another OS) or names them otherwise (ARM), which leaves numba
    untargeted."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def kernel_caps(flags: Collection[str]) -> dict[str, str]:
    """The variables ``use_portable_kernels`` sets on a CPU with these flags, before the user's."""
    return {**PORTABLE_KERNELS, **(NUMBA_TARGET if HASWELL_FLAGS <= set(flags) else {})}


def native_kernels_asked(environ: Mapping[str, str]) -> bool:
    """Whether ``AVS_NATIVE_KERNELS`` asks for native kernels (1, true, yes, on)."""
    return environ.get(NATIVE_SWITCH, "").strip().lower() in {"1", "true", "yes", "on"}


def portable_kernel_env(environ: Mapping[str, str], flags: Collection[str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` with each variable of ``kernel_caps`` added where ``environ`` does not
    set it (a value the user set is kept); an unchanged copy where ``AVS_NATIVE_KERNELS=1``.
    ``flags``: this CPU's unless given."""
    env = dict(environ)
    use_portable_kernels(env, flags)
    return env


def use_portable_kernels(environ: MutableMapping[str, str] | None = None,
                         flags: Collection[str] | None = None) -> dict[str, str]:
    """Put the caps into this process's environment (``os.environ`` unless given), where unset;
    returns the kernel variables now in effect. Call it before NumPy and torch are imported: a
    library that has already read its variable keeps the kernels it chose. ``flags``: the CPU's
    instruction flags (this CPU's unless given), which decide numba's target."""
    environ = os.environ if environ is None else environ
    if not native_kernels_asked(environ):
        if any(name in environ for name in NUMBA_TARGET):  # the user's own numba target, kept whole
            caps = PORTABLE_KERNELS
        else:
            caps = kernel_caps(cpu_flags() if flags is None else flags)
        for name, value in caps.items():
            environ.setdefault(name, value)
    return kernel_settings(environ)


# what a run's record names: the caps, numba's target, MKL's reproducibility mode where the user
# sets it, the switch
KERNEL_VARIABLES = (*PORTABLE_KERNELS, *NUMBA_TARGET, "MKL_CBWR", NATIVE_SWITCH)


def kernel_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The kernel variables ``environ`` sets (the caps and the native switch), for a run's record."""
    return {name: environ[name] for name in KERNEL_VARIABLES if name in environ}


def without_kernel_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` without any kernel variable: the start of a process that is to be
    capped, or not, from scratch (the tests, ``benchmarks/kernel_fingerprint.py``)."""
    return {name: value for name, value in environ.items() if name not in KERNEL_VARIABLES}

