"""LoRA fine-tuning of a multimodal LLM with TRL's SFTTrainer.

    accelerate launch recipes/lora.py --config recipes/configs/lab/lora.yaml

Any config value can be overridden on the command line, e.g. ``--max_steps 50 --output_dir runs/lora``.
Writes the merged checkpoint (loadable by lmms-eval's ``llava_hf``), ``adapter/`` and ``forgetbench_manifest.json``
to ``output_dir``.
"""

from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

from forgetbench.training import ForgetbenchArguments, run_recipe


def main(script_args, training_args, model_args, forgetbench_args):
    forgetbench_args.method = "lora"
    run_recipe(script_args, training_args, model_args, forgetbench_args)


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
    main(*parser.parse_args_and_config())
