"""prompt_tuning (additive): a soft prompt of --num_virtual_tokens learned embeddings.

    accelerate launch recipes/prompt_tuning.py --config recipes/configs/lab/prompt_tuning.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("prompt_tuning")
