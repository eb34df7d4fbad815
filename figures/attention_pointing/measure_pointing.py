"""One trained run's attention, read as notebook 05 reads it, into OUT_DIR: ``pointing.json`` (the
pointing accuracy per stage with its chance and its reach (the most any map could score on the
stage's grid, ``pointing_reach``), where the peaks that miss land (``peak_places``), the
attention's anatomy around each sounding object, and test J&F with the attention spread over the
frame or zeroed, ``attention_interventions``),
``anatomy.png`` and ``maps.png`` (four test frames' masks and each token's map at the stage that
points best, as notebook 05 draws stage 1's).

python figures/attention_pointing/measure_pointing.py RUN_DIR OUT_DIR   (from the repository root)"""
import json
import sys
from pathlib import Path

from avs_lib.analysis.evaluation import attention_interventions
from avs_lib.analysis.inspect import attention_anatomy, peak_places, pointing_accuracy, pointing_reach
from avs_lib.data.datasets import world_frame_size
from avs_lib.models.hooks import run_with_cache
from avs_lib.training.predict import load_trained
from avs_lib.viz.plots import attention_anatomy_figure, qualitative

run, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
model, config, prepared = load_trained(run / "best.pt")
test = prepared.test
size = world_frame_size(config.data_root)
cache = run_with_cache(model, test, names=["derivation.classes", "stage*.block*.cross_attn.pattern", "logits"], strict=False)
result = {"run": str(run), "fusion_query": model.config.fusion_query,
          "pointing": pointing_accuracy(cache, test, size),
          "reach": pointing_reach(cache, test, size),
          "places": peak_places(cache, test, size),
          "anatomy": attention_anatomy(cache, test, size, queries=model.config.fusion_query),
          "interventions": [{k: r[k] for k in ("intervention", "JF", "ci95")}
                            for r in attention_interventions(model, test, config)]}
(out / "pointing.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps({"pointing": result["pointing"], "reach": result["reach"], "interventions": result["interventions"]}))

attention_anatomy_figure(result["anatomy"], out / "anatomy.png")
pointing = result["pointing"]
best = max((k for k in pointing if k.startswith("stage")), key=pointing.get)
stage = int(best.split()[1])
blocks = [n for n in cache if n.startswith(f"stage{stage}.block")]  # in forward order
pick = list(range(0, len(test), max(1, len(test) // 4)))[:4]
h, w = cache.hw(stage)
maps = cache[blocks[-1]][pick].mean(1).transpose(1, 2).reshape(len(pick), -1, h, w).numpy()  # [4, K, h, w]
names = [[prepared.memory.class_names[c] for c in row] for row in cache["derivation.classes"][pick].tolist()]
qualitative(test.images[pick].permute(0, 2, 3, 1).numpy(), test.masks[pick].numpy(), cache["logits"][pick].numpy(),
            maps, out / "maps.png", token_names=names)
