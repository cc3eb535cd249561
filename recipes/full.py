"""full (selective): the whole LLM (embeddings, decoder layers, norm, lm_head) and the projector.

    accelerate launch recipes/full.py --config recipes/configs/lab/full.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("full")
