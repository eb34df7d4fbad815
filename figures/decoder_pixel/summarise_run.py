"""One trained run's figures for this folder: ``errors.json`` (test J&F with its 95 % interval over
clips, and ``choice_and_outline`` of its masks), ``curve.json`` (validation J&F against frames
seen, ``late_gain`` and ``late_trend``, each epoch's seconds and frames/s) and ``scores.json`` (its
per-frame test J&F, which ``avs compare`` pairs with later runs once the checkpoint is gone),
written into OUT_DIR.

python figures/decoder_pixel/summarise_run.py RUN_DIR OUT_DIR   (from the repository root)"""
import json
import sys
from pathlib import Path

from avs_lib.analysis.compare import save_scores, score_runs
from avs_lib.analysis.evaluation import jf_interval_of
from avs_lib.training.loop import late_gain, late_trend, learning_curve
from avs_lib.training.predict import load_trained

run, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
model, config, prepared = load_trained(run / "best.pt")
world = json.loads((Path(config.data_root) / "world.json").read_text())
row = jf_interval_of(model, prepared.test, config, source_size=world["config"]["size"])
(out / "errors.json").write_text(json.dumps(row, indent=1) + "\n")
history = json.loads((run / "metrics.json").read_text())["history"]
curve = {"curve": learning_curve(history), "late_gain": late_gain(history), "late_trend": late_trend(history),
         "epochs": [{"epoch": r["epoch"], "val_JF": r["val"]["JF"], "seconds": r["seconds"],
                     "frames_per_second": r["frames_per_second"]} for r in history]}
(out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
# scored once more from best.pt, as avs compare scores a run (the same frames, predictions and digest)
save_scores(score_runs([run])[0], out / "scores.json", "test")
print(json.dumps({"run": str(run), "JF": row["JF"], "ci95": row["ci95"], **row.get("errors", {}),
                  "late_gain": curve["late_gain"], "late_trend": curve["late_trend"]}))
