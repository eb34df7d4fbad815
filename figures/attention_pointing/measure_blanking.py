"""One trained run's fusion attention taken away, place by place (``blanking_interventions``): the
attention weights of every token set to zero in the cells of the silent objects' boxes, of the
sounding objects' boxes, or of as many random background cells as the silent boxes have (the
control), in every fusion block of every test frame. Writes ``blanking.json`` (test J&F, its paired
change, and where the errors are, per blanking) and ``blanking.png`` into OUT_DIR.

python figures/attention_pointing/measure_blanking.py RUN_DIR OUT_DIR [TITLE]   (from the repository root)"""
import json
import sys
from pathlib import Path

from avs_lib.analysis.evaluation import blanking_interventions
from avs_lib.data.datasets import world_frame_size
from avs_lib.training.predict import load_trained
from avs_lib.viz.plots import blanking_figure

run, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
model, config, prepared = load_trained(run / "best.pt")
rows = blanking_interventions(model, prepared.test, config, world_frame_size(config.data_root))
(out / "blanking.json").write_text(json.dumps({"run": str(run), "rows": rows}, indent=1) + "\n")
for r in rows:
    e = r["errors"]
    print(f"{r['intervention']:<58} J&F {r['JF']:.3f}  delta {100 * r['delta']:+.1f} "
          f"[{100 * r['delta_ci95'][0]:+.1f}, {100 * r['delta_ci95'][1]:+.1f}]  taken {e['taken']}/{e['silent']}  "
          f"found {e['found']}/{e['found'] + e['missed']}  cells {r['cells_blanked']:.3f}")
blanking_figure(rows, out / "blanking.png", title=sys.argv[3] if len(sys.argv) > 3 else None)
