"""One trained run's fusion attention taken away, place by place (``blanking_interventions``): the
attention weights of every token set to zero in the cells of the silent objects' boxes, of the
sounding objects' boxes, or of as many random background cells as the silent boxes have (the
control), in every fusion block of every test frame. Writes ``blanking.json`` (test J&F, its paired
change, and where the errors are, per blanking) and ``blanking.png`` into OUT_DIR.

python figures/attention_pointing/measure_blanking.py RUN_DIR OUT_DIR [--title T] [--places P ...]
    [--stages S ...] [--one-stage-at-a-time] [--name blanking]   (from the repository root)

--places: any of avs_lib.analysis.evaluation.PLACES_TO_BLANK (default: BLANKED_REGIONS);
--stages: blank only these stages' fusion blocks; --one-stage-at-a-time: blank each place in one
stage's blocks at a time (each of --stages, default every stage), to say which stage carries an
effect; --name: the output files' stem."""
import argparse
import json
from pathlib import Path

from avs_lib.analysis.evaluation import BLANKED_REGIONS, PLACES_TO_BLANK, blanking_interventions, blanking_row_text
from avs_lib.data.datasets import world_frame_size
from avs_lib.training.predict import load_trained
from avs_lib.viz.plots import blanking_figure

parser = argparse.ArgumentParser()
parser.add_argument("run", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--title")
parser.add_argument("--places", nargs="+", choices=PLACES_TO_BLANK, default=list(BLANKED_REGIONS))
parser.add_argument("--stages", nargs="+", type=int)
parser.add_argument("--one-stage-at-a-time", action="store_true")
parser.add_argument("--name", default="blanking")
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
model, config, prepared = load_trained(args.run / "best.pt")
rows = blanking_interventions(model, prepared.test, config, world_frame_size(config.data_root), places=tuple(args.places),
                              stages=tuple(args.stages) if args.stages else None,
                              one_stage_at_a_time=args.one_stage_at_a_time)
(args.out / f"{args.name}.json").write_text(json.dumps({"run": str(args.run), "places": args.places,
                                                        "stages": args.stages,
                                                        "one_stage_at_a_time": args.one_stage_at_a_time,
                                                        "rows": rows}, indent=1) + "\n")
width = max(len(r["intervention"]) for r in rows)  # the columns line up whatever the rows are called
for r in rows:
    print(blanking_row_text(r, width=width))
blanking_figure(rows, args.out / f"{args.name}.png", title=args.title)
