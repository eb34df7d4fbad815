"""Two runs' test J&F set against each other where one of them has no per-frame scores left to pair
(its checkpoint gone before ``scores.json`` was kept): the difference with its unpaired 95 % interval
(``avs_lib.analysis.stats.unpaired_difference``), from the runs' ``errors.json``
(``summarise_run.py``) or ``pointing.json`` (``figures/attention_pointing/measure_pointing.py``:
its "as trained" reading).

python figures/decoder_pixel/unpaired_difference.py FIRST.json SECOND.json   (from the repository root; each an
errors.json or a pointing.json)"""
import json
import sys
from pathlib import Path

from avs_lib.analysis.stats import unpaired_difference


def reading_of(path: str) -> dict:
    """{"JF", "ci95"} of a run's test split, from either file."""
    data = json.loads(Path(path).read_text())
    if "interventions" in data:  # pointing.json
        data = next((r for r in data["interventions"] if r["intervention"] == "as trained"), {})
    if "JF" not in data or "ci95" not in data:
        sys.exit(f"{path}: no test J&F with its interval; give an errors.json or a pointing.json")
    return data


first, second = (reading_of(path) for path in sys.argv[1:3])
delta, low, high = unpaired_difference((first["JF"], first["ci95"]), (second["JF"], second["ci95"]))
print(f"{first['JF']:.3f} -> {second['JF']:.3f}: {100 * delta:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] points, unpaired")
