"""last_layer (selective): the last decoder layer of the LLM.

    accelerate launch recipes/last_layer.py --config recipes/configs/lab/last_layer.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("last_layer")
