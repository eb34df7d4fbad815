"""What a run found, in a sentence computed from its own numbers.

The notebooks end their sections with these sentences, so an executed notebook says what this run
measured ("within-frame AUC 0.52 [0.47, 0.58]: the interval contains 0.5 ...") rather than how to
read a number in general. Each function takes the numbers an analysis returned and a reference
that gives them meaning (chance, a ceiling, a floor) and says which side of it the run landed on.
"""
from __future__ import annotations


def _interval(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci is not None else "(no interval)"


def against_reference(what: str, value: float | None, ci, reference: float, above: str, below: str,
                      inside: str) -> str:
    """``what value [low, high]: <verdict>``: ``above`` when the whole 95 % interval lies above
    ``reference``, ``below`` when it lies below, ``inside`` when it contains it (or has no interval)."""
    if value is None:
        return f"{what}: not measured in this run (no pairs to compare)."
    if ci is None:
        verdict = inside
    elif ci[0] > reference:
        verdict = above
    elif ci[1] < reference:
        verdict = below
    else:
        verdict = inside
    return f"{what} {value:.3f} {_interval(ci)}: {verdict}"


# a spread of log S across a frame's tokens under this weights them alike: their scores differ by
# under a tenth of e, so no token is taken out of the fusion more than another
ALIKE_LOG_STD = 0.1


def elimination_finding(stage: str, within_frame: dict, spread: dict | None = None) -> str:
    """The sentence for one stage's within-frame AUC (``inspect.elimination_analysis``). With the
    stage's ``spread`` (``inspect.score_spread``), an AUC away from 0.5 is weighed against how far
    the scores differ: an order among scores that weight the tokens alike (spread of log S under
    ``ALIKE_LOG_STD``) ranks the tokens without choosing between them."""
    alike = spread is not None and spread["log_std"] < ALIKE_LOG_STD
    weight = (f" but a frame's scores differ by {spread['log_std']:.2g} in log S (spread under {ALIKE_LOG_STD}: "
              "the tokens are weighted alike), so the order chooses nothing.") if alike else ""
    return against_reference(
        f"{stage}: within-frame AUC", within_frame.get("auc"), within_frame.get("ci95"), 0.5,
        "in a frame, tokens whose class sounds on screen score higher than the others;"
        + (weight or " the scores choose."),
        "in a frame, tokens whose class sounds on screen score LOWER than the others" + (";" + weight if alike else "."),
        "the interval contains 0.5, so the scores do not choose between a frame's tokens.")


def spread_finding(spread: dict[str, dict]) -> str:
    """Whether the scores of a frame's tokens differ (``inspect.score_spread`` per stage): the
    largest spread of log S over the stages against ``ALIKE_LOG_STD`` (tokens weighted alike)."""
    stage, widest = max(spread.items(), key=lambda item: item[1]["log_std"])
    if widest["log_std"] < ALIKE_LOG_STD:
        return (f"Every stage gives a frame's tokens nearly the same score (the widest spread of log S, at "
                f"{stage}, is {widest['log_std']:.3f}): elimination acts as one gate per frame.")
    return (f"The scores of a frame's tokens differ: the spread of log S reaches {widest['log_std']:.3f} at {stage} "
            f"(the standard deviation of S {widest['std']:.3f} around a mean of {widest['mean']:.3f}).")


def separation_finding(separation: dict[str, dict]) -> str:
    """How far apart a frame's tokens are against how far apart two frames are
    (``inspect.token_separation``; ``enhanced``: the tokens elimination scores)."""
    ratio = separation["enhanced"]["ratio"]
    if ratio < 0.25:
        verdict = "variations of one audio feature: what a frame's sources are moves them together, not apart"
    elif ratio < 1:
        verdict = "apart, but closer to each other than two frames' tokens are"
    else:
        verdict = "as far apart as the tokens of two different frames: derivation separates the sources"
    return (f"Within a frame the enhanced tokens are {separation['enhanced']['within_frame']:.3f} apart, between frames "
            f"{separation['enhanced']['between_frames']:.3f} (ratio {ratio:.2f}): the frame's tokens are {verdict}.")


def sweep_finding(what: str, values: dict, tolerance: float = 0.02) -> str:
    """Whether a what-if sweep ({setting: value}) moved the value by more than ``tolerance``."""
    known = {k: v for k, v in values.items() if v is not None}
    if len(known) < 2:
        return f"{what}: too few settings gave a value to compare."
    low, high = min(known, key=known.get), max(known, key=known.get)
    span = known[high] - known[low]
    if span <= tolerance:
        return f"{what} stays within {span:.3f} over {sorted(known)}: it does not depend on this setting."
    return f"{what} ranges from {known[low]:.3f} (at {low}) to {known[high]:.3f} (at {high}): a span of {span:.3f}."


def recall_finding(k: int, recall: float, chance: float, ceiling: float | None) -> str:
    """Derivation recall at K against chance and the encoder's own logits (notebook 02)."""
    text = f"At K={k} the nearest centres find {recall:.0%} of a frame's sounding classes (chance {chance:.0%})"
    if ceiling is None:
        return text + "."
    gap = ceiling - recall
    verdict = ("the memory keeps what the encoder hears" if gap < 0.05
               else "the memory loses part of what the encoder hears")
    return text + f", against {ceiling:.0%} for the encoder's own logits: {verdict} (a gap of {gap:.0%})."


def probe_finding(scores: dict[str, float], chance: float) -> str:
    """Linear-probe macro-F1 per model against chance (notebook 04)."""
    best = max(scores, key=scores.get)
    parts = ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
    verdict = ("every representation names the class well above chance" if min(scores.values()) > 2 * chance
               else "some representation names the class barely better than chance")
    return f"Linear-probe macro-F1: {parts} (chance about {chance:.3f}); {best} is best, and {verdict}."
