"""Throughput of forgetbench's lmms-eval model against lmms-eval's built-in ``llava_hf``, in one run.

Both wrappers answer the same requests, built by lmms-eval from the same lab task, on the same model; each is
loaded and warmed up before it is timed, so the figures compare request handling (batching), not loading.
(lmms-eval's evaluator frees a model after one evaluation, so the benchmark calls ``generate_until`` itself.)

    python benchmarks/bench_lmms_model.py                          # the lab model on CPU, batch 8
    python benchmarks/bench_lmms_model.py --arch llava_onevision_0.5b --device cuda --dtype bfloat16 --limit 256

``llava_onevision_0.5b`` is a random-init model with LLaVA-OneVision-0.5B's configuration (Qwen2-0.5B + SigLIP
so400m at 384 px, anyres), built offline with the lab's tokenizer: its answers are noise, its cost is real.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def onevision_folder(out: Path, dtype: str) -> Path:
    """Save a random-init LLaVA-OneVision-0.5B and a processor for it to ``out``."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    from forgetbench.lab.model import CHAT_TEMPLATE, build_tokenizer
    from forgetbench.lab.tiny import ONEVISION_0_5B_TEXT, ONEVISION_0_5B_VISION

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>"]})
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(),
        video_processor=LlavaOnevisionVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        num_image_tokens=(384 // 14) ** 2,
        vision_feature_select_strategy="full",
    )
    text = {**ONEVISION_0_5B_TEXT, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id}
    config = LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", **ONEVISION_0_5B_VISION},
        text_config={"model_type": "qwen2", **text},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def timed_generate(lm, task, requests) -> tuple[float, list[str]]:
    """Seconds for ``lm.generate_until`` over the task's requests, as lmms-eval's evaluator would call it."""
    import torch

    lm.task_dict[task.config.task] = task.dataset
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    answers = lm.generate_until(requests)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, [str(getattr(a, "text", a)) for a in answers]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["lab", "llava_onevision_0.5b"], default="lab")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--task", default="forgetbench_lab_digits")
    parser.add_argument("--limit", type=int, default=300)
    args = parser.parse_args(argv)

    import torch
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager, get_task_dict

    import forgetbench
    from forgetbench.evaluate.model import ImageTextModel
    from forgetbench.lab.model import base_model_path

    manager = TaskManager(include_path=str(forgetbench.tasks_path()), include_defaults=False)
    task = get_task_dict([args.task], manager)[args.task]
    task.build_all_requests(limit=args.limit)
    requests = [instance for instance in task.instances if instance.request_type == "generate_until"]
    with tempfile.TemporaryDirectory() as scratch:
        folder = base_model_path() if args.arch == "lab" else onevision_folder(Path(scratch), args.dtype)
        device_map = "cuda:0" if args.device == "cuda" else args.device
        builtin = get_model("llava_hf", force_simple=True).create_from_arg_string(  # same requests as ours
            f"pretrained={folder},device_map={device_map},dtype={args.dtype}", {"batch_size": 1, "device": args.device}
        )
        ours = ImageTextModel(pretrained=str(folder), device=args.device, dtype=args.dtype,
                              batch_size=args.batch_size)
        for lm in (builtin, ours):  # warm-up: kernels, allocator
            timed_generate(lm, task, requests[: args.batch_size])
        builtin_seconds, builtin_answers = timed_generate(builtin, task, requests)
        ours_seconds, ours_answers = timed_generate(ours, task, requests)

    report = {
        "arch": args.arch,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()}",
        "dtype": args.dtype,
        "task": args.task,
        "samples": len(requests),
        "llava_hf_batch_1_samples_per_s": round(len(requests) / builtin_seconds, 2),
        f"forgetbench_batch_{args.batch_size}_samples_per_s": round(len(requests) / ours_seconds, 2),
        "speedup": round(builtin_seconds / ours_seconds, 2),
        "same_answers": sum(a == b for a, b in zip(builtin_answers, ours_answers, strict=True)) / len(requests),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
