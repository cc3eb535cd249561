"""ia3 (additive): IA3 scaling vectors on the LLM's keys, values and MLP down-projection inputs.

    accelerate launch recipes/ia3.py --config recipes/configs/lab/ia3.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("ia3")
