import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_package_file_is_git_ignored():
    files = [str(p.relative_to(ROOT)) for p in (ROOT / "avs_lib").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ignored == [], f"ignored by .gitignore, so a fresh clone would lack them: {ignored}"
