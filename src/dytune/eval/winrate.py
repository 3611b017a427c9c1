"""Win / tie / loss tables and win rates with a question-level bootstrap interval, as JSON, Markdown and PNG.

Input: one `Verdict` per (question, turn) comparing model A with model B. Win rate of A:

    win_rate = (wins + ties / 2) / comparisons

The 95% interval resamples whole questions (both turns of a question travel together, since they are not
independent), 2,000 times by default, and takes the 2.5 / 97.5 percentiles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

OUTCOMES = ("win", "tie", "loss")
_POINTS = {"win": 1.0, "tie": 0.5, "loss": 0.0}


@dataclass
class Verdict:
    """A's result against B on one turn of one question."""

    question_id: int | str
    category: str
    turn: int  # 1-based
    outcome: str  # "win" | "tie" | "loss", for model A
    margin_ab: float  # judge's margin for A with A shown first (> 0: A better)
    margin_ba: float  # judge's margin for A with B shown first, sign-flipped (> 0: A better)

    def to_dict(self) -> dict:
        return asdict(self)


def decide(margin_ab: float, margin_ba: float, tie_margin: float = 0.0) -> str:
    """A wins only if it is preferred in both orders, loses only if B is; anything else is a tie
    (a verdict that flips with the order is position bias, not preference)."""
    if margin_ab > tie_margin and margin_ba > tie_margin:
        return "win"
    if margin_ab < -tie_margin and margin_ba < -tie_margin:
        return "loss"
    return "tie"


def bootstrap_win_rate(verdicts: list[Verdict], n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the win rate, resampling questions with replacement."""
    by_q: dict = {}
    for v in verdicts:
        pts, n = by_q.get(v.question_id, (0.0, 0))
        by_q[v.question_id] = (pts + _POINTS[v.outcome], n + 1)
    if not by_q:
        return float("nan"), float("nan")
    points = np.array([p for p, _ in by_q.values()])
    counts = np.array([n for _, n in by_q.values()])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(points), size=(n_boot, len(points)))  # (n_boot, n_questions)
    rates = points[idx].sum(1) / counts[idx].sum(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(rates, [tail, 100 - tail])
    return float(low), float(high)


def tally(verdicts: list[Verdict], n_boot: int = 2000, seed: int = 0) -> dict:
    counts = {o: sum(v.outcome == o for v in verdicts) for o in OUTCOMES}
    n = len(verdicts)
    rate = (counts["win"] + 0.5 * counts["tie"]) / n if n else float("nan")
    low, high = bootstrap_win_rate(verdicts, n_boot, seed)
    return {**counts, "n": n, "questions": len({v.question_id for v in verdicts}),
            "win_rate": rate, "ci95": [low, high]}


def summarize(verdicts: list[Verdict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Overall, per turn and per category tallies."""
    turns = sorted({v.turn for v in verdicts})
    categories = sorted({v.category for v in verdicts})
    return {
        "overall": tally(verdicts, n_boot, seed),
        "per_turn": {str(t): tally([v for v in verdicts if v.turn == t], n_boot, seed) for t in turns},
        "per_category": {c: tally([v for v in verdicts if v.category == c], n_boot, seed) for c in categories},
    }


def _row(label: str, t: dict) -> str:
    low, high = t["ci95"]
    return (f"| {label} | {t['win']} | {t['tie']} | {t['loss']} | {t['n']} | "
            f"{t['win_rate']:.3f} | [{low:.3f}, {high:.3f}] |")


def markdown(summary: dict, model_a: str, model_b: str, judge: str, both_orders: bool = True) -> str:
    how = ("both answer orders judged, a verdict that flips with the order counts as a tie" if both_orders else
           "each answer scored on its own, the higher score wins")
    lines = [f"### {model_a} vs {model_b} (judge: {judge})", "",
             f"Win / tie / loss of **{model_a}** against **{model_b}**; {how}. Win rate = (win + tie/2) / n; "
             "95% bootstrap interval over questions.", "",
             "| | win | tie | loss | n | win rate | 95% CI |", "|---|---:|---:|---:|---:|---:|---|",
             _row("**all**", summary["overall"])]
    lines += [_row(f"turn {t}", s) for t, s in summary["per_turn"].items()]
    lines += [_row(c, s) for c, s in summary["per_category"].items()]
    return "\n".join(lines) + "\n"


def bar_chart(summary: dict, model_a: str, model_b: str, judge: str, path) -> None:
    """Horizontal stacked bars of win / tie / loss shares: all, per turn, per category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("all", summary["overall"])] + [(f"turn {t}", s) for t, s in summary["per_turn"].items()] + \
        list(summary["per_category"].items())
    labels = [f"{name} (n={s['n']})" for name, s in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    colors = {"win": "#2a9d8f", "tie": "#c9c9c9", "loss": "#e76f51"}
    names = {"win": f"{model_a} better", "tie": "tie", "loss": f"{model_b} better"}
    for outcome in OUTCOMES:
        share = np.array([s[outcome] / s["n"] if s["n"] else 0.0 for _, s in rows])
        ax.barh(y, share, left=left, color=colors[outcome], label=names[outcome], height=0.7)
        left += share
    for yi, (_, s) in zip(y, rows):
        low, high = s["ci95"]
        ax.errorbar(s["win_rate"], yi, xerr=[[s["win_rate"] - low], [high - s["win_rate"]]], fmt="o",
                    color="black", ms=4, capsize=3, lw=1)
    ax.axvline(0.5, color="black", lw=0.8, ls="--")
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of comparisons  (dot: win rate of {model_a} with 95% bootstrap CI)")
    ax.set_title(f"{model_a} vs {model_b}, judge: {judge}", fontsize=11, pad=26)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, fontsize=9)
    if len(rows) > 1 + len(summary["per_turn"]):  # separate the overall rows from the categories
        ax.axhline(y[len(summary["per_turn"])] - 0.5, color="black", lw=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
