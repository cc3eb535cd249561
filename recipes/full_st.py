"""full_st (selective): every decoder layer of the LLM (not embeddings, final norm or lm_head).

    accelerate launch recipes/full_st.py --config recipes/configs/lab/full_st.yaml

What a method trains is in forgetbench/train/methods.py; options, outputs and configs: docs/recipes.md.
"""

from forgetbench.train import recipe_main

if __name__ == "__main__":
    recipe_main("full_st")
