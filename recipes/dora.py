"""dora (reparameterization): DoRA (weight-decomposed LoRA) on the same layers as LoRA.

    accelerate launch recipes/dora.py --config recipes/configs/lab/dora.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("dora")
