"""Post-training: full, LoRA, LoRA+DyT and DyT-only, with distillation from the original model.

    from dytune.train import TrainConfig, train
    summary = train(TrainConfig(model="smollm2-135m", data="alpaca.json", mode="lora+dyt", distill=True,
                                output_dir="runs/lora_dyt", max_steps=100))

Modules: config (TrainConfig = YAML schema = CLI), trainable (modes, parameter groups), losses (CE + KL +
hidden match), teacher (original norms via hooks, frozen copy), local (block-wise distillation), trainer
(Trainer subclass), callbacks (metrics.jsonl), outputs (final/, adapter/, EOS), run (the pipeline).
"""

from dytune.train.config import TrainConfig, parse_config
from dytune.train.run import train

__all__ = ["TrainConfig", "parse_config", "train"]
