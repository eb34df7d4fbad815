"""The README's generated parts: the run-numbers block (quoted from a main-job batch) and the architecture table (listed from the package's tree).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from avs_lib.core.files import read_json


README_BLOCK = ("<!-- run-numbers: start -->", "<!-- run-numbers: end -->")


def headline_numbers(metrics: dict) -> dict[str, float]:
    """The scalar numbers of a metrics.json, nested keys joined by dots (lists are left out, and so
    are wall-clock times: they change run to run, the results must not)."""
    numbers = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or "seconds" in key:
            continue
        if isinstance(value, (int, float)):
            numbers[key] = value
        elif isinstance(value, dict):
            numbers.update({f"{key}.{k}": v for k, v in headline_numbers(value).items()})
    return numbers


def format_number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def readme_numbers(readme: Path) -> dict[tuple[str, str], str]:
    """{(notebook, number): value} from the README's table between the run-numbers markers."""
    if not readme.exists():
        return {}
    text = readme.read_text()
    if README_BLOCK[0] not in text:
        return {}
    block = text.split(README_BLOCK[0], 1)[1].split(README_BLOCK[1], 1)[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("notebook", "") and not set(cells[0]) <= set("-: "):
            rows[cells[0], cells[1]] = cells[2]
    return rows


def update_readme_numbers(batch: Path, readme: Path) -> None:
    """Rewrite the run-numbers block of ``readme`` (between its markers) to quote the run ``batch``."""
    text = readme.read_text()
    start, end = text.index(README_BLOCK[0]), text.index(README_BLOCK[1])
    readme.write_text(text[:start] + readme_block(batch) + text[end + len(README_BLOCK[1]):])


def readme_block(batch: Path) -> str:
    """The README's table of headline numbers for the run ``batch`` (between the markers)."""
    lines = [README_BLOCK[0], "", f"Numbers of the committed main-job run `{batch.as_posix()}` "
             "(each notebook's `metrics.json`; `make run` reproduces them where it runs the same CPU kernels: "
             "\"Two commands\" says where that was checked; its run report puts them side by side with a new run's):",
             "", "| notebook | number | value |", "| --- | --- | --- |"]
    for run in sorted(p for p in batch.iterdir() if (p / "metrics.json").exists()):
        for key, value in headline_numbers(read_json(run / "metrics.json")).items():
            lines.append(f"| `{run.name}` | `{key}` | {format_number(value)} |")
    return "\n".join(lines + ["", README_BLOCK[1]])


# ----------------------------------------------------------------------------- the architecture table
ARCHITECTURE_BLOCK = ("<!-- architecture: start -->", "<!-- architecture: end -->")
# the packages in the order the data flows through them; a package not named here comes last
LAYERS = ("core", "data", "world", "audio", "memory", "models", "training", "analysis", "viz", "experiments")


def summary_line(path: Path) -> str:
    """The first sentence of a module's docstring, on one line, as markdown ("" when it has none)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = re.split(r"\.\s+(?=[A-Z])", paragraph)[0].rstrip(".")
    return sentence.replace("``", "`").replace("|", "\\|")


def architecture_table(package: Path) -> str:
    """The README's architecture table for the package folder ``package``: one row per module (each
    package's ``__init__`` first, then its modules by name), packages in data-flow order
    (``LAYERS``), ``cli.py`` last; each row the module's dotted name and its docstring's first
    sentence. ``test_layout`` checks the README against it, so it cannot go stale."""
    package = Path(package)
    root = package.parent

    def name(path: Path) -> str:
        parts = path.relative_to(root).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    subpackages = sorted((p.parent for p in package.glob("*/__init__.py")),
                         key=lambda p: (LAYERS.index(p.name) if p.name in LAYERS else len(LAYERS), p.name))
    lines = ["| module | its job |", "| --- | --- |"]
    for folder in subpackages:
        modules = [folder / "__init__.py"] + sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
        for path in modules:
            label = f"**`{name(path)}`**" if path.name == "__init__.py" else f"`{name(path)}`"
            lines.append(f"| {label} | {summary_line(path)} |")
    lines.append(f"| `{name(package / 'cli.py')}` | {summary_line(package / 'cli.py')} |")
    return "\n".join(lines)


def readme_architecture(readme: Path) -> str:
    """The table between the README's architecture markers ("" when it has none)."""
    text = Path(readme).read_text()
    if ARCHITECTURE_BLOCK[0] not in text:
        return ""
    return text.split(ARCHITECTURE_BLOCK[0], 1)[1].split(ARCHITECTURE_BLOCK[1], 1)[0].strip()


def update_readme_architecture(readme: Path, package: Path) -> None:
    """Rewrite the README's architecture table (between its markers) from the package's tree."""
    text = Path(readme).read_text()
    start, end = text.index(ARCHITECTURE_BLOCK[0]), text.index(ARCHITECTURE_BLOCK[1])
    block = f"{ARCHITECTURE_BLOCK[0]}\n{architecture_table(package)}\n{ARCHITECTURE_BLOCK[1]}"
    Path(readme).write_text(text[:start] + block + text[end + len(ARCHITECTURE_BLOCK[1]):])


if __name__ == "__main__":  # python -m avs_lib.experiments.readme --architecture
    import sys

    import avs_lib

    if sys.argv[1:] != ["--architecture"]:
        sys.exit("usage: python -m avs_lib.experiments.readme --architecture  (rewrites README.md's architecture table)")
    here = Path(avs_lib.__file__).parent
    update_readme_architecture(here.parent / "README.md", here)
