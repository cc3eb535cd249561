"""ln_tuning (additive): LN tuning: trainable copies of the LLM's RMSNorm layers.

    accelerate launch recipes/ln_tuning.py --config recipes/configs/lab/ln_tuning.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("ln_tuning")
