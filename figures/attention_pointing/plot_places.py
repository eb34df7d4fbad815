"""Where each run's token maps peak (``peak_places``, read by ``measure_pointing.py`` into
``DIR/pointing.json``), the runs stacked in one figure.

python figures/attention_pointing/plot_places.py OUT.png LABEL=DIR [LABEL=DIR ...]   (from the repository root)"""
import json
import sys
from pathlib import Path

from avs_lib.viz.plots import peak_places_figure

out, pairs = Path(sys.argv[1]), [argument.split("=", 1) for argument in sys.argv[2:]]
runs = {label: json.loads((Path(folder) / "pointing.json").read_text())["places"] for label, folder in pairs}
peak_places_figure(runs, out)
print(out)
