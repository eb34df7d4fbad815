import json
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
per_epoch = 6992
six_model = [0.567, 0.641, 0.664, 0.689, 0.705, 0.720]    # figures/every_lever/README.md
six_ceiling = [0.703, 0.765, 0.786, 0.798, 0.807, 0.815]  # figures/every_lever/README.md
ten = json.load(open("figures/every_lever_10_epochs/curve.json"))["curve"]
refine = json.load(open("figures/decoder_refine/curve.json"))["curve"]
fig, ax = plt.subplots(figsize=(7.5, 4.2))
x6 = [per_epoch * (i + 1) / 1000 for i in range(6)]
ax.plot(x6, six_ceiling, "o--", color="tab:orange", label="ceiling, six epochs (every_lever)")
ax.plot([p["frames_seen"] / 1000 for p in refine], [p["JF"] for p in refine], ".-", color="tab:red",
        label="ceiling, six epochs, deeper refinement")
ax.plot(x6, six_model, "o--", color="tab:blue", label="model, six epochs (every_lever)")
ax.plot([p["frames_seen"] / 1000 for p in ten], [p["JF"] for p in ten], ".-", color="tab:green",
        label="model, ten epochs")
for y, name in ((0.85, "ceiling target 0.85"), (0.75, "model target 0.75")):
    ax.axhline(y, color="grey", lw=0.8, ls=":")
    ax.text(1, y + 0.004, name, color="grey", fontsize=8)
ax.set_xlabel("training frames seen (thousands; fresh clips)")
ax.set_ylabel("validation J&F (ms3, 1 500 frames)")
ax.set_title("Every lever, seed 0: longer training and a deeper refinement")
ax.set_ylim(0.4, 0.9)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig("figures/every_lever_10_epochs/learning_curves.png", dpi=120)
