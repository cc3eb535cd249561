"""lora (reparameterization): LoRA on every attention and MLP linear layer of the LLM.

    accelerate launch recipes/lora.py --config recipes/configs/lab/lora.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("lora")
