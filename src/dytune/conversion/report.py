"""What a conversion did, layer by layer: `ConversionReport` (saved as conversion_report.json beside a model)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class LayerReport:
    name: str
    kind: str
    norm_type: str
    converted: bool
    alpha: float | None = None  # mean alpha if per-channel
    alpha_min: float | None = None
    alpha_max: float | None = None
    fit_error: float | None = None  # relative MSE of DyT vs the norm on calibration tokens


@dataclass
class ConversionReport:
    alpha_init: str
    per_channel: bool
    kinds: list[str]
    layers: list[LayerReport] = field(default_factory=list)
    calibration_tokens: int = 0
    form: str = "dyt"  # ConvertConfig.form: dyt (tanh) or fakeln (the linear form)
    refit: str = "none"  # which parameters calibration refitted besides alpha (ConvertConfig.calibration_refit)
    refit_ridge: float | None = None  # the "linear" refit's ridge strength
    refit_ridge_to: str | None = None  # and what it pulls towards

    @property
    def converted(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.converted]

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)

    def table(self) -> str:
        """Markdown table, one row per norm layer."""
        rows = ["| layer | kind | norm | converted | alpha | fit error |", "|---|---|---|---|---|---|"]
        for r in self.layers:
            if r.alpha is None:
                alpha = "-"
            elif r.alpha_min is not None and r.alpha_max is not None and r.alpha_min != r.alpha_max:
                alpha = f"{r.alpha:.4g} ({r.alpha_min:.3g}..{r.alpha_max:.3g})"
            else:
                alpha = f"{r.alpha:.4g}"
            err = "-" if r.fit_error is None else f"{r.fit_error:.4f}"
            rows.append(f"| {r.name} | {r.kind} | {r.norm_type} | {'yes' if r.converted else 'no'} | {alpha} | {err} |")
        n = len(self.converted)
        rows.append("")
        rows.append(f"{n} of {len(self.layers)} norm layers converted"
                    + ("" if self.form == "dyt" else f" to {self.form}")
                    + f"; alpha init: {self.alpha_init}"
                    + (f"; calibration tokens: {self.calibration_tokens}" if self.calibration_tokens else "")
                    + (f"; least-squares refit: {self.refit}" if self.refit != "none" else ""))
        return "\n".join(rows)
