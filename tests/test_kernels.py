"""Portable CPU kernels (avs_lib.core.kernels): the caps reach the `avs` process and every notebook
kernel, a value the user set is kept, and AVS_NATIVE_KERNELS=1 turns them off."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from avs_lib.core.kernels import (NATIVE_SWITCH, NUMBA_TARGET, PORTABLE_KERNELS, cpu_flags, kernel_caps,
                                  kernel_settings, portable_kernel_env, use_portable_kernels, without_kernel_settings)

REPO = Path(__file__).resolve().parent.parent
CAPS = sorted({**PORTABLE_KERNELS, **NUMBA_TARGET})  # every variable use_portable_kernels may set
# Linux's flag names, written out here rather than taken from kernels.py
AVX2_FLAGS = {"sse4_2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "abm", "movbe", "aes"}
AVX512_FLAGS = AVX2_FLAGS | {"avx512f", "avx512bw", "avx512vl"}
AVX_ONLY_FLAGS = {"sse4_2", "popcnt", "avx"}  # Sandy Bridge: code for Haswell would not run


def clean_env(**extra: str) -> dict[str, str]:
    return {**without_kernel_settings(os.environ), **extra}


def this_cpus_caps(**overrides: str) -> dict[str, str | None]:
    """What a process started capped on this CPU reads for each variable (None: unset)."""
    return {name: {**kernel_caps(cpu_flags()), **overrides}.get(name) for name in CAPS}


@given(st.dictionaries(st.sampled_from(CAPS + ["HOME", "PATH"]), st.text("abc", min_size=1, max_size=3)),
       st.sampled_from([AVX2_FLAGS, AVX512_FLAGS, AVX_ONLY_FLAGS, AVX2_FLAGS - {"bmi2"}, set()]))
def test_caps_fill_only_what_is_unset(given_env, flags):
    env = portable_kernel_env(given_env, flags)
    for name in PORTABLE_KERNELS:
        assert env[name] == given_env.get(name, PORTABLE_KERNELS[name])
    # numba's target: only on a CPU with every Haswell instruction, and never half of it
    targeted = {"avx2", "bmi2"} <= flags and not {"NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"} & given_env.keys()
    assert {k: env.get(k) for k in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")} == (
        {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""} if targeted else
        {k: given_env.get(k) for k in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")})
    assert {k: env[k] for k in given_env} == given_env  # nothing the caller set is changed
    assert portable_kernel_env({**given_env, NATIVE_SWITCH: "1"}, flags) == {**given_env, NATIVE_SWITCH: "1"}


def test_use_portable_kernels_writes_the_given_environment_and_reports_it():
    environ = {"ONEDNN_MAX_CPU_ISA": "SSE41", "HOME": "/x", "MKL_CBWR": "COMPATIBLE"}
    settings = use_portable_kernels(environ, AVX512_FLAGS)
    assert environ["ONEDNN_MAX_CPU_ISA"] == "SSE41" and environ["ATEN_CPU_CAPABILITY"] == "avx2"
    assert settings == kernel_settings(environ) and "HOME" not in settings
    assert set(settings) == {*CAPS, "MKL_CBWR"}  # MKL's reproducibility mode, where the user sets it, is recorded
    native = {NATIVE_SWITCH: "1"}
    assert use_portable_kernels(native) == native == {NATIVE_SWITCH: "1"}


def test_cpu_flags_reads_linux_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx2 avx512f\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse4_2 avx2 avx512f\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse4_2", "avx2", "avx512f"}
    assert cpu_flags(tmp_path / "absent") == frozenset()  # another OS: numba keeps its own target
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # ARM names its flags otherwise
    assert "NUMBA_CPU_NAME" not in kernel_caps(cpu_flags(cpuinfo))


def test_cpu_flags_agree_with_llvm_on_this_cpu():
    """numba's target is decided from /proc/cpuinfo: LLVM, which compiles numba's code, must see the
    same instructions (otherwise a parsing slip would leave numba untargeted with every test green)."""
    import llvmlite.binding as llvm

    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo: numba stays untargeted here")
    llvm_features = {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}
    flags = cpu_flags()
    for name in ("avx2", "avx512f", "bmi2", "fma"):  # the same name in both
        assert (name in flags) == (name in llvm_features), name


# Imports avs_lib.cli as `avs` does, with a spy in place of use_portable_kernels that records whether
# NumPy or torch was imported before the caps were set (then they would not bind)
PROBE = ("import json, os, sys; import avs_lib.core.kernels as k; calls = []; real = k.use_portable_kernels; "
         "k.use_portable_kernels = lambda *a: calls.append(sorted({'numpy', 'torch'} & set(sys.modules))) or real(*a); "
         "import avs_lib.cli, numpy, torch; "
         "from numpy._core._multiarray_umath import __cpu_features__ as f; "
         "print(json.dumps({'calls': calls, 'env': {k: os.environ.get(k) for k in %r}, "
         "'torch': torch.backends.cpu.get_cpu_capability(), 'numpy_v4': f.get('X86_V4', False)}))" % CAPS)


def probe(env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_avs_process_caps_numpy_and_torch_before_importing_them():
    seen = probe(clean_env())
    assert seen["calls"] == [[]]  # called once, before either library was imported
    assert seen["env"] == this_cpus_caps()
    assert seen["torch"] in {"AVX2", "DEFAULT"} and seen["numpy_v4"] is False
    # a cap the user set reaches torch itself: DEFAULT is below every x86-64 CPU's own level
    assert probe(clean_env(ATEN_CPU_CAPABILITY="default"))["torch"] == "DEFAULT"
    assert set(probe(clean_env(**{NATIVE_SWITCH: "1"}))["env"].values()) == {None}


def test_every_notebook_kernel_runs_capped_whoever_started_it(tmp_path, monkeypatch):
    from avs_lib.experiments.notebooks import run_notebook

    notebook = tmp_path / "kernels.py"
    notebook.write_text('# %% tags=["parameters"]\nrun_dir = "."\n\n# %%\nimport json, os, torch\nfrom pathlib import Path\n'
                        f'Path(run_dir, "seen.json").write_text(json.dumps({{"env": {{k: os.environ.get(k) for k in {CAPS!r}}}, '
                        '"torch": torch.backends.cpu.get_cpu_capability()}))\n')
    for name in (*CAPS, NATIVE_SWITCH):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")  # this process's own value is the kernel's too
    run = run_notebook(notebook, {}, name="capped", runs_dir=tmp_path / "runs", progress=False)
    seen = json.loads((Path(run) / "seen.json").read_text())
    assert seen["env"] == this_cpus_caps(ATEN_CPU_CAPABILITY="default") and seen["torch"] == "DEFAULT"
    recorded = json.loads((Path(run) / "environment.json").read_text())
    assert recorded["kernel_settings"] == {k: v for k, v in seen["env"].items() if v is not None}

    monkeypatch.setenv(NATIVE_SWITCH, "1")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    run = run_notebook(notebook, {}, name="native", runs_dir=tmp_path / "runs", progress=False)
    seen = json.loads((Path(run) / "seen.json").read_text())
    assert set(seen["env"].values()) == {None}
    assert json.loads((Path(run) / "environment.json").read_text())["kernel_settings"] == {NATIVE_SWITCH: "1"}


@pytest.mark.parametrize("settings, text", [
    ({"ATEN_CPU_CAPABILITY": "avx2"}, ", AVX2 kernels (capped at AVX2)"),
    ({NATIVE_SWITCH: "1"}, ", AVX2 kernels (native: the CPU's widest)"),
    (None, ", AVX2 kernels")])
def test_the_run_report_says_how_the_kernels_were_chosen(settings, text):
    from avs_lib.experiments.pipeline import kernels_text

    env = {"cpu_kernels": "AVX2"} if settings is None else {"cpu_kernels": "AVX2", "kernel_settings": settings}
    assert kernels_text(env) == text


def test_capped_kernels_give_the_committed_fingerprint(monkeypatch):
    """The claim itself, where a machine can check it: capped, this CPU's libraries compute what the
    AVX2 machine that made the committed run computed (benchmarks/kernel_fingerprint.py). On an
    AVX512 CPU this is the check the caps exist for; on an AVX2 one (an Intel CPU: MKL's own path)
    it is worth making too."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from kernel_fingerprint import differing, in_fresh_process, package_versions, unmatched, versions_differing

    reference = json.loads((REPO / "benchmarks" / "kernel_fingerprint_avx2.json").read_text())["capped"]
    if versions_differing(package_versions(), reference["versions"]):
        pytest.skip(f"other package versions than the reference's ({package_versions()} against "
                    f"{reference['versions']}): its hashes do not apply")
    ours = in_fresh_process(native=False)
    assert ours["cpu_kernels"] in {"AVX2", "DEFAULT"}
    assert differing(ours["hashes"], reference["hashes"]) == [], "capped, this CPU still computes differently"
    # the reference (made before numba had a target) lacks only numba's entry; nothing else went missing
    assert unmatched(ours["hashes"], reference["hashes"]) == ["numba fastmath float32 sums"]


# The fingerprint's fastmath loop (benchmarks/kernel_fingerprint.py), compiled in a fresh process:
# its machine code shows which instructions numba compiled for, and numba's config what it was told
NUMBA_PROBE = ("import json, re, sys, numpy as np, llvmlite.binding as llvm\n"
               "sys.path.insert(0, 'benchmarks')\n"
               "from kernel_fingerprint import numba_dot\n"
               "dot = numba_dot(); a = np.ones(64, np.float32); dot(a, a)\n"
               "asm = next(iter(dot.inspect_asm().values()))\n"
               "from numba.core import config\n"
               "print(json.dumps({'avx512': bool(re.search(r'zmm|[xy]mm(1[6-9]|2[0-9]|3[01])\\b|%k[1-7]', asm)), "
               "'ymm': 'ymm' in asm, 'target': [config.CPU_NAME, config.CPU_FEATURES], "
               "'host': llvm.get_host_cpu_name()}))")


def numba_compiles(env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", NUMBA_PROBE], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_capped_numba_compiles_avx2_code():
    if not {"avx2", "bmi2", "fma"} <= cpu_flags():
        pytest.skip("a CPU without Haswell's instructions: numba compiles for it, untargeted")
    capped = numba_compiles(portable_kernel_env(clean_env()))
    assert capped["target"] == ["haswell", ""]
    assert capped["ymm"] and not capped["avx512"]  # AVX2's 256-bit registers, nothing of AVX512's
    native = numba_compiles(clean_env(**{NATIVE_SWITCH: "1"}))
    assert native["target"] == [None, None]
    # the probe can tell: on AMD's AVX512 CPUs LLVM uses 512-bit registers for this loop (on Intel's
    # server CPUs it prefers 256-bit ones, so there native and capped code may look alike)
    if "avx512f" in cpu_flags() and native["host"].startswith("znver"):
        assert native["avx512"]
