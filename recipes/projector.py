"""projector (selective): the vision-language projector only.

    accelerate launch recipes/projector.py --config recipes/configs/lab/projector.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("projector")
