import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_package_file_is_git_ignored():
    files = [str(p.relative_to(ROOT)) for p in (ROOT / "avs_lib").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    done = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode in (0, 1), f"git check-ignore failed: {done.stderr}"  # 1: nothing ignored; 128: an error
    ignored = done.stdout.split()
    assert ignored == [], f"ignored by .gitignore, so a fresh clone would lack them: {ignored}"


@pytest.mark.parametrize("bench", sorted(p.name for p in (Path(__file__).parents[1] / "benchmarks").glob("bench_*.py")))
def test_every_benchmark_imports_and_parses_its_arguments(bench):
    # the benchmarks are not run in CI (they are timed); this catches a renamed import or a broken parser
    import sys

    path = Path(__file__).parents[1] / "benchmarks" / bench
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
