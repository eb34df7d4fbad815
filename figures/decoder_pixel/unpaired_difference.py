"""Two runs' test J&F set against each other where one of them has no per-frame scores left to pair
(its checkpoint gone before ``scores.json`` was kept): the difference with its unpaired 95 % interval
(``avs_lib.analysis.stats.unpaired_difference``), from the runs' ``errors.json``.

python figures/decoder_pixel/unpaired_difference.py FIRST/errors.json SECOND/errors.json   (from the repository root)"""
import json
import sys
from pathlib import Path

from avs_lib.analysis.stats import unpaired_difference

first, second = (json.loads(Path(path).read_text()) for path in sys.argv[1:3])
delta, low, high = unpaired_difference((first["JF"], first["ci95"]), (second["JF"], second["ci95"]))
print(f"{first['JF']:.3f} -> {second['JF']:.3f}: {100 * delta:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] points, unpaired")
