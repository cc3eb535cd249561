"""qlora (reparameterization): LoRA on the LLM's linear layers over a bitsandbytes 4-bit (nf4) LLM.

    accelerate launch recipes/qlora.py --config recipes/configs/lab/qlora.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("qlora")
