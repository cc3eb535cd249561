"""top_layers (selective): the top k decoder layers of the LLM (--top_k).

    accelerate launch recipes/top_layers.py --config recipes/configs/lab/top_layers.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("top_layers")
