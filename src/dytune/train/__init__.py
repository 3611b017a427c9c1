"""Post-training: full, LoRA, LoRA+DyT and DyT-only, with distillation from the original model.

    from dytune.train import TrainConfig, train
    summary = train(TrainConfig(model="smollm2-135m", data="alpaca.json", mode="lora+dyt", distill=True,
                                output_dir="runs/lora_dyt", max_steps=100))

Modules: config (TrainConfig = YAML schema = CLI; the conversion keys are ConvertConfig's), trainable (modes,
parameter groups), losses (CE + KL + hidden match), teacher (original norms via hooks, frozen copy), local
(block-wise distillation), removal (gradual norm removal), trainer (Trainer subclass), callbacks (metrics.jsonl,
token budget), outputs (final/, adapter/, EOS, the LayerNorm twin's card), summary (RunSummary = summary.json),
run (the recipe: TrainRecipe's named steps).
"""

from dytune.train.config import TrainConfig, parse_config
from dytune.train.run import TrainRecipe, train
from dytune.train.summary import RunSummary

__all__ = ["RunSummary", "TrainConfig", "TrainRecipe", "parse_config", "train"]
