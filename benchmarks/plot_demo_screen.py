"""Plot benchmarks/results/demo_recovery_screen.json (the demo's recovery step, screened; docs/recovery.md):
held-out CE against training tokens, every evaluation a point, one line per variant.

    python benchmarks/plot_demo_screen.py      # -> benchmarks/results/demo_recovery_screen.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads((RESULTS / "demo_recovery_screen.json").read_text())
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, variant in result["variants"].items():
        curve = variant["curve"]
        ax.plot([p["tokens"] for p in curve], [p["eval_loss"] for p in curve], marker="o", ms=3, label=name)
    ax.axhline(result.get("original_ce", 1.916), color="grey", linestyle=":", linewidth=0.8, label="original model")
    ax.axhline(result.get("original_ce", 1.916) + 1.0, color="grey", linestyle="--", linewidth=0.8,
               label="demo target: original + 1.0 nat")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out ShareGPT CE, assistant tokens (nat)")
    ax.set_title("SmolLM2-135M DyT: the demo's recovery step, screened (48 held-out conversations)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "demo_recovery_screen.png", dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
