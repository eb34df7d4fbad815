"""Which stage's fusion attention keeps the silent objects out: ``blanking_interventions`` with the
silent objects' boxes, and the background control, blanked in one stage's fusion blocks at a time.
Writes ``blanking_by_stage.json`` and ``blanking_by_stage.png`` into OUT_DIR.

python figures/attention_pointing/measure_blanking_by_stage.py RUN_DIR OUT_DIR [TITLE]   (from the repository root)"""
import json
import sys
from pathlib import Path

from avs_lib.analysis.evaluation import BLANKED_REGIONS, blanking_interventions, blanking_row_text
from avs_lib.data.datasets import world_frame_size
from avs_lib.training.predict import load_trained
from avs_lib.viz.plots import blanking_figure

run, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
model, config, prepared = load_trained(run / "best.pt")
size = world_frame_size(config.data_root)
rows = []
for stage in (1, 2, 3, 4):
    staged = blanking_interventions(model, prepared.test, config, size, places=(BLANKED_REGIONS[0], BLANKED_REGIONS[2]),
                                    stages=(stage,))
    if not rows:
        rows.append(staged[0])  # "as trained" is the same model whatever the stage
    rows += [{**r, "intervention": f"stage {stage} only, {r['intervention']}"} for r in staged[1:]]
    for r in rows[-2:]:
        print(blanking_row_text(r, width=70), flush=True)
(out / "blanking_by_stage.json").write_text(json.dumps({"run": str(run), "rows": rows}, indent=1) + "\n")
blanking_figure(rows, out / "blanking_by_stage.png", title=sys.argv[3] if len(sys.argv) > 3 else None)
