"""Read run directories: what a training run (and a sweep's extra steps) left behind, as one `Run`.

A run directory (a `TrainConfig.output_dir`) holds:

    config.yaml | config.json      the resolved training config
    metrics.jsonl                  one JSON object a line: train loss, grad norm, lr, tokens/s, alpha per
                                   DyT layer; validation loss / perplexity
    summary.json                   written last: the run finished
    final/                         the trained model (dytune.load)
    sweep_run.json                 (sweeps) the grid values of this run, its config fingerprint, step status
    eval.json, answers.jsonl, judge.json, bench.json, error.txt   (sweeps) the extra steps, a failure

Metric names are read under the spellings transformers, TRL and dytune use (`eval_loss`, `val_loss`,
`eval/loss`, ...), so a run written by a plain `Trainer` reads too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dytune._jsonio import read_json, read_jsonl
from dytune.errors import DytuneError
from dytune.train.summary import RunSummary

CONFIG_FILES = ("config.yaml", "config.yml", "config.json", "train_config.yaml", "train_config.json",
                "resolved_config.yaml", "resolved_config.json")
NORMS = ("layernorm", "dyt")
NORM_LABELS = {"layernorm": "LayerNorm", "dyt": "DyT"}

# canonical metric -> accepted spellings (first found wins)
_TRAIN_KEYS = {
    "train_loss": ("train_loss", "train/loss", "loss"),
    "grad_norm": ("grad_norm", "train/grad_norm", "gradient_norm"),
    "lr": ("learning_rate", "lr", "train/learning_rate"),
    "tokens_per_s": ("tokens_per_s", "tokens_per_second", "train_tokens_per_second", "tokens/s", "train/tokens_per_s"),
}
_VAL_KEYS = {
    "val_loss": ("val_loss", "eval_loss", "eval/loss", "val/loss", "validation_loss"),
    "val_ppl": ("val_perplexity", "eval_perplexity", "eval/perplexity", "val/perplexity", "val_ppl", "eval_ppl",
                "perplexity"),
}
def is_dyt_only(key: str) -> bool:
    """A setting a LayerNorm twin ignores (`TrainConfig` field metadata; sweeps' `recipe`; a `dyt...` key): sweeps share
    one LayerNorm run among DyT runs that differ only in these, and reports pair them with it."""
    from dytune.train.config import DYT_ONLY_KEYS

    return key in DYT_ONLY_KEYS or key == "recipe" or key.lower().startswith("dyt")


def twin_key(settings: dict, ignore: frozenset[str] | set[str] = frozenset()) -> str:
    """What a DyT run and its LayerNorm twin share: every setting but the DyT-only ones (and `ignore`)."""
    kept = {k: v for k, v in settings.items() if not is_dyt_only(k) and k not in ignore and k != "twin"}
    return json.dumps(kept, sort_keys=True, default=str)


def find_twin(settings: dict, candidates: dict[str, dict], ignore: frozenset[str] | set[str] = frozenset(),
              ) -> str | None:
    """The name of the LayerNorm run among `candidates` ({name: settings}) that is `settings`' twin: the one its
    `twin:` names, else the first whose settings equal its own but for the DyT-only keys (and `ignore`)."""
    if settings.get("twin"):
        return settings["twin"] if settings["twin"] in candidates else None
    key = twin_key(settings, ignore)
    return next((name for name, other in candidates.items()
                 if str(other.get("norm", "dyt")) == "layernorm" and twin_key(other, ignore) == key), None)


_VAL_SPLITS = {"val", "eval", "validation"}
# model sizes (parameters) when a run directory does not say; the study's models
KNOWN_SIZES = {"distilgpt2": 81.9e6, "gpt2": 124.4e6, "pythia-70m": 70.4e6, "pythia-160m": 162.3e6,
               "pythia-410m": 405.3e6, "smollm2-135m": 134.5e6, "smollm2-135m-instruct": 134.5e6,
               "smollm2-360m": 361.8e6, "smollm2-360m-instruct": 361.8e6}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (list, tuple)):  # a per-channel alpha: its mean
        vals = [v for v in (_num(x) for x in value) if v is not None]
        return sum(vals) / len(vals) if vals else None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def pick(d: dict | None, *keys: str) -> Any:
    """The first present key of `d`; a dotted key (`val.loss`) reaches into nested dicts."""
    for key in keys:
        node: Any = d
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def canonical(record: dict) -> dict:
    """One metrics.jsonl record -> canonical keys: step, epoch, train_loss, grad_norm, lr, tokens_per_s,
    val_loss, val_ppl, alpha ({layer: value})."""
    out: dict[str, Any] = {"step": _num(pick(record, "step", "global_step", "train/global_step")),
                           "epoch": _num(pick(record, "epoch", "train/epoch"))}
    split = str(record.get("split", record.get("kind", record.get("type", "")))).lower()
    if split in _VAL_SPLITS:  # {"split": "val", "loss": ...}
        out["val_loss"] = _num(pick(record, *_VAL_KEYS["val_loss"], "loss"))
        out["val_ppl"] = _num(pick(record, *_VAL_KEYS["val_ppl"]))
    else:
        for name, keys in _VAL_KEYS.items():
            out[name] = _num(pick(record, *keys))
        if "train_runtime" in record:  # Trainer's end-of-training record: a run average, not a point
            return {k: v for k, v in out.items() if v is not None and k in ("step", "epoch")}
        if out["val_loss"] is None or any(k in record for k in ("train_loss", "train/loss")):
            # dytune logs the CE part as `ce` beside the total `loss` (which adds the distillation terms):
            # the CE is what compares with the validation loss and across recipes
            out["train_loss"] = _num(pick(record, "ce", *_TRAIN_KEYS["train_loss"]))
            if "ce" in record and (total := _num(record.get("loss"))) is not None:
                out["train_objective"] = total
        for name in ("grad_norm", "lr", "tokens_per_s"):
            out[name] = _num(pick(record, *_TRAIN_KEYS[name]))
    if out.get("val_loss") is not None and out.get("val_ppl") is None and out["val_loss"] < 50:
        out["val_ppl"] = math.exp(out["val_loss"])
    alpha: dict[str, float] = {}
    nested = record.get("alpha")
    if isinstance(nested, dict):
        alpha.update({k: v for k, v in ((k, _num(v)) for k, v in nested.items()) if v is not None})
    for key, value in record.items():
        for prefix in ("alpha/", "alpha.", "dyt_alpha/", "train/alpha/"):
            if key.startswith(prefix) and (v := _num(value)) is not None:
                alpha[key[len(prefix):]] = v
    if alpha:
        out["alpha"] = alpha
    return {k: v for k, v in out.items() if v is not None}


def read_config(path: Path) -> dict:
    """The resolved training config of a run directory ({} if none is there)."""
    for name in CONFIG_FILES:
        file = path / name
        if file.is_file():
            text = file.read_text()
            if file.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
            return data if isinstance(data, dict) else {}
    return {}


def read_metrics(path: Path) -> list[dict]:
    """Canonical records of `metrics.jsonl` (a torn last line, from an interrupted run, is skipped)."""
    out = []
    for record in read_jsonl(path / "metrics.jsonl"):
        rec = canonical(record)
        if len(rec) > 2 or ("step" not in rec and "epoch" not in rec and rec):
            out.append(rec)
    return out


def short_name(value: Any) -> str:
    """A readable short form of a model or data source: a path's stem, a Hub id's name."""
    if isinstance(value, dict):
        value = value.get("name") or value.get("source") or json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        return "+".join(short_name(v) for v in value)
    text = str(value).rstrip("/")
    if ":" in text and not text.startswith(("/", ".")) and "/" not in text.split(":", 1)[1]:
        text = text.split(":", 1)[0]  # "path:weight"
    name = Path(text).name or text
    for suffix in (".jsonl", ".json", ".parquet", ".arrow", ".gguf", ".csv", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


@dataclass
class Run:
    path: Path
    name: str
    config: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # facets: model, norm, dataset, mode, seed, + grid keys
    metrics: list[dict] = field(default_factory=list)
    summary: RunSummary | None = None  # summary.json: written last, so None while the run has not ended
    eval: dict | None = None
    judge: dict | None = None
    bench: dict | None = None
    sweep: dict | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        """summary.json written by a completed run (`dytune train` also writes one when it stops on a NaN)."""
        return self.summary is not None and self.summary.finished

    @property
    def norm(self) -> str:
        return self.params.get("norm", "layernorm")

    @property
    def dataset(self) -> str:
        return str(self.params.get("dataset", "?"))

    @property
    def model(self) -> str:
        return str(self.params.get("model", "?"))

    def series(self, metric: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(x, y) of a canonical metric over the records that have both."""
        xs, ys = [], []
        for i, rec in enumerate(self.metrics):
            if metric in rec:
                xv = rec.get(x, i if x == "step" else None)
                if xv is not None:
                    xs.append(xv)
                    ys.append(rec[metric])
        return xs, ys

    def alpha_series(self) -> dict[str, tuple[list[float], list[float]]]:
        """{layer: (steps, alpha)} in the order layers first appear."""
        out: dict[str, tuple[list[float], list[float]]] = {}
        for i, rec in enumerate(self.metrics):
            for layer, value in rec.get("alpha", {}).items():
                xs, ys = out.setdefault(layer, ([], []))
                xs.append(rec.get("step", i))
                ys.append(value)
        return out

    # final numbers ---------------------------------------------------------------------------------------
    @property
    def val_loss(self) -> float | None:
        value = self.summary.val_loss if self.summary else None
        if value is None and self.eval:
            value = _num(pick(self.eval, "assistant.loss", "models.0.assistant.loss", "loss"))
            if value is None and isinstance(self.eval.get("models"), list) and self.eval["models"]:
                value = _num(pick(self.eval["models"][-1], "assistant.loss"))
        if value is None:
            _, ys = self.series("val_loss")
            value = ys[-1] if ys else None
        return value

    @property
    def val_ppl(self) -> float | None:
        value = self.summary.val_ppl if self.summary else None
        if value is None and (loss := self.val_loss) is not None and loss < 50:
            value = math.exp(loss)
        return value

    @property
    def tokens_per_s(self) -> float | None:
        value = self.summary.tokens_per_second if self.summary else None
        if value is None:
            _, ys = self.series("tokens_per_s")
            value = sum(ys) / len(ys) if ys else None
        return value

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Median decode tokens/s of the run's model from `bench.json` (the first measured shape)."""
        rows = (self.bench or {}).get("results") or (self.bench or {}).get("models") or []
        for row in rows if isinstance(rows, list) else []:
            value = _num(pick(row, "decode_tokens_per_s.median", "decode_tok_s.median", "decode.tokens_per_s.median",
                              "decode_tokens_per_s"))
            if value is not None:
                return value
        return None

    @property
    def win_rate(self) -> tuple[float, float, float] | None:
        """(win rate, ci low, ci high) of this run's answers in its `judge.json`."""
        overall = pick(self.judge, "summary.overall")
        if not overall:
            return None
        low, high = overall.get("ci95", [float("nan")] * 2)
        return overall["win_rate"], low, high

    @cached_property
    def parameters(self) -> float | None:
        counted = self.summary.num_parameters if self.summary else None
        return float(counted) if counted else _param_count(self)


def _param_count(run: Run) -> float | None:
    """Parameters of the run's model: counted from a config on the meta device, else the KNOWN_SIZES table."""
    candidates = [run.path / "final", run.path / "final" / "base"]
    base = run.config.get("model") if isinstance(run.config.get("model"), str) else None
    if base and Path(base).is_dir():
        candidates.append(Path(base))
    for directory in candidates:
        cfg = directory / "config.json"
        if cfg.is_file():
            try:
                import torch
                from transformers import AutoConfig, AutoModelForCausalLM

                import dytune.hf_registration  # noqa: F401 - DyT configs

                with torch.device("meta"):
                    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
                return float(sum(p.numel() for p in model.parameters()))
            except Exception:  # noqa: BLE001 - fall back to the table
                pass
    return KNOWN_SIZES.get(run.model.lower().removesuffix("-dyt"))


def _facets(path: Path, config: dict, sweep: dict | None) -> dict:
    params = dict((sweep or {}).get("params") or {})
    model = config.get("model") or pick(config, "model.name", "model_name_or_path")
    data = config.get("data")
    source = pick(data, "source") if isinstance(data, dict) else data
    norm = params.get("norm") or config.get("norm")
    if norm is None:  # a run without a config: look at what it saved
        final = read_json(path / "final" / "config.json") or {}
        norm = "dyt" if final.get("model_type") == "dytune" or "dyt" in final else "layernorm"
    out = {
        "model": short_name(params.get("model", model or "?")),
        "norm": str(norm).lower(),
        "dataset": short_name(params.get("data", params.get("dataset", source or "?"))),
        "mode": str(params.get("mode", config.get("mode", "full"))),
        "seed": params.get("seed", config.get("seed", 42)),  # TrainingArguments' default seed
    }
    if out["norm"] in ("ln", "layer_norm", "norm", "rmsnorm"):
        out["norm"] = "layernorm"
    for key, value in params.items():
        if key not in ("model", "norm", "data", "dataset", "mode", "seed"):
            out[key] = value if isinstance(value, (int, float, str, bool)) else short_name(value)
    return out


def load_run(path: str | Path) -> Run:
    """Read one run directory (missing pieces are None / empty: an unfinished run still reads)."""
    path = Path(path)
    if not path.is_dir():
        raise DytuneError(f"run directory not found: {path}")
    config = read_config(path)
    sweep = read_json(path / "sweep_run.json")
    sweep_config = path.parent / "configs" / f"{path.name}.yaml"
    if not config and sweep is not None and sweep_config.is_file():  # a sweep run that failed before writing one
        import yaml

        config = yaml.safe_load(sweep_config.read_text()) or {}
    error = (path / "error.txt").read_text(errors="replace").strip() if (path / "error.txt").is_file() else None
    run = Run(path=path, name=(sweep or {}).get("name") or path.name, config=config,
              params=_facets(path, config, sweep), metrics=read_metrics(path),
              summary=RunSummary.read(path), eval=read_json(path / "eval.json"),
              judge=read_json(path / "judge.json"), bench=read_json(path / "bench.json"), sweep=sweep,
              error=error)
    return run


def _is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("metrics.jsonl", "summary.json", "sweep_run.json", *CONFIG_FILES))


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Runs from run directories and sweep directories (any directory whose subdirectories are runs).

    With several paths (a shell glob such as `runs/sweep/*`), files and folders that hold no run are skipped;
    a single path that holds none is an error."""
    import sys

    runs: list[Run] = []
    seen: set[Path] = set()
    skipped: list[str] = []
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            if len(paths) > 1 and path.exists():
                skipped.append(str(path))
                continue
            raise DytuneError(f"not a directory: {path} (give run directories or a sweep directory)")
        if _is_run_dir(path) and not (path / "sweep_summary.json").is_file():
            dirs = [path]
        else:
            dirs = sorted(d for d in path.iterdir() if d.is_dir() and _is_run_dir(d))
            if not dirs:
                if len(paths) > 1:
                    skipped.append(str(path))
                    continue
                raise DytuneError(f"{path} is neither a run directory (metrics.jsonl, summary.json or a config) nor "
                                  "a folder of them")
        for d in dirs:
            if d.resolve() not in seen:
                seen.add(d.resolve())
                runs.append(load_run(d))
    if not runs:
        raise DytuneError(f"no run directory among {', '.join(map(str, paths))}")
    if skipped:
        print(f"dytune report: skipped {len(skipped)} path(s) that hold no run: {', '.join(skipped[:5])}"
              + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
    return runs


def _facet_settings(run: Run) -> dict:
    return {k: str(v) for k, v in run.params.items()}


def twins(runs: list[Run]) -> dict[str, Run]:
    """{DyT run name: its LayerNorm twin} (`find_twin` over the runs' facets)."""
    by_name = {run.name: run for run in runs}
    candidates = {run.name: _facet_settings(run) for run in runs if run.norm == "layernorm"}
    out = {}
    for run in runs:
        if run.norm == "dyt" and (twin := find_twin(_facet_settings(run), candidates)) is not None:
            out[run.name] = by_name[twin]
    return out
