"""forgetbench's lmms-eval model: any transformers image-text-to-text model, batched, with likelihood scoring.

    lmms-eval --model forgetbench --model_args pretrained=DIR[,adapter=ADAPTER_DIR][,dtype=bfloat16] \
        --batch_size 8 --tasks ...

Why it exists (lmms-eval 0.7.3's built-in wrappers, see docs/lmms-eval.md): ``llava_hf`` generates one sample at a
time and cannot score ``multiple_choice`` tasks (its loglikelihood drops the images); no wrapper loads a PEFT
adapter. This one loads any ``AutoModelForImageTextToText`` folder, optionally a PEFT adapter on top, generates in
batches (left padding) and implements ``loglikelihood`` with the images in the context. It runs on CPU and GPU, and
under ``accelerate launch``/``torchrun`` data parallelism (lmms-eval shards the requests by rank).

Prompts go through the processor's chat template as ``[{"type": "image"}, ..., {"type": "text", "text": context}]``,
which is also how TRL renders the training conversations.
"""

from __future__ import annotations

import torch
from lmms_eval import utils
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms

MODEL_ID = "forgetbench"


class ImageTextModel(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str,
        adapter: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_new_tokens: int = 256,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        max_batch_size: int | None = None,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"--model {MODEL_ID}: unknown model_args: {', '.join(sorted(unknown))}")
        from accelerate import Accelerator
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from forgetbench.checkpoint import resolve_model

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self._device = accelerator.device  # one model per rank; lmms-eval gives each rank its own requests
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        self.accelerator = accelerator

        path = resolve_model(pretrained)
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # generation appends on the right of every row
        model = AutoModelForImageTextToText.from_pretrained(
            path,
            dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        if adapter:
            from peft import PeftModel

            # Merged for speed: the adapter's answers equal the merged checkpoint's (a test holds this).
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        self.model = model.to(self._device).eval()
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.pretrained, self.adapter = pretrained, adapter

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    # -- prompts -------------------------------------------------------------------------------------------------

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return [visual for visual in (visuals or []) if visual is not None]

    def prompt(self, context: str, n_images: int) -> str:
        """The chat-formatted prompt for one request, ending where the model's answer starts."""
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": context}]
        return self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )

    def _encode(self, texts: list[str], images: list, padding_side: str) -> dict:
        inputs = self.processor(
            text=texts, images=images or None, padding=True, padding_side=padding_side, return_tensors="pt"
        )
        inputs = inputs.to(self._device)
        if "pixel_values" in inputs and self.model.dtype != torch.float32:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    # -- lmms-eval API -------------------------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance]) -> list[str]:
        collator = utils.Collator(
            [request.args for request in requests],
            sort_fn=lambda args: -len(args[0]),  # similar lengths together: less padding
            grouping=True,  # by gen_kwargs: one generate() call cannot mix them
        )
        answers = []
        for batch in collator.get_batched(n=self.batch_size):
            contexts, all_gen_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*batch, strict=True)
            gen_kwargs = dict(all_gen_kwargs[0])
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            visuals = [self._visuals(*args) for args in zip(doc_to_visuals, doc_ids, tasks, splits, strict=True)]
            texts = [self.prompt(context, len(images)) for context, images in zip(contexts, visuals, strict=True)]
            inputs = self._encode(texts, [image for images in visuals for image in images], "left")
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            generate_kwargs = {
                "max_new_tokens": int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                "do_sample": temperature > 0,
                "num_beams": int(gen_kwargs.get("num_beams", 1)),
                "pad_token_id": self.tokenizer.pad_token_id,
            }
            if temperature > 0:
                generate_kwargs.update(temperature=temperature, top_p=gen_kwargs.get("top_p"))
            with torch.inference_mode():
                output = self.model.generate(**inputs, **generate_kwargs)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
                for stop in until:
                    if stop and stop in text:
                        text = text.split(stop, 1)[0]
                answers.append(text)
        return collator.get_original(answers)

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Summed negative log-likelihood of each continuation given its context and images, and whether it is the
        greedy continuation. lmms-eval 0.7.3 picks the choice with the smallest value (``argmin``), so this is a
        loss; it travels inside ``GenerationResult`` because lmms-eval turns a bare ``(float, bool)`` into a string.
        """
        results = []
        arguments = [request.args for request in requests]
        for start in range(0, len(arguments), self.batch_size):
            batch = arguments[start : start + self.batch_size]
            prompts, fulls, n_continuation, images = [], [], [], []
            for context, continuation, doc_to_visual, doc_id, task, split in batch:
                visuals = self._visuals(doc_to_visual, doc_id, task, split)
                prompt = self.prompt(context, len(visuals))
                prompts.append(prompt)
                fulls.append(prompt + continuation)
                images.extend(visuals)
                # Continuation tokens = tokens(prompt + continuation) - tokens(prompt), as lm-eval counts them.
                n_prompt = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
                n_full = len(self.tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"])
                n_continuation.append(n_full - n_prompt)
            inputs = self._encode(fulls, images, "right")
            with torch.inference_mode():
                logits = self.model(**inputs).logits.float()
            log_probs = torch.log_softmax(logits, dim=-1)
            lengths = inputs["attention_mask"].sum(dim=1)
            for row, n in enumerate(n_continuation):
                end = int(lengths[row])
                targets = inputs["input_ids"][row, end - n : end]
                predicted = log_probs[row, end - n - 1 : end - 1]
                nll = -predicted.gather(-1, targets[:, None]).sum().item()
                greedy = bool((predicted.argmax(dim=-1) == targets).all())
                results.append(GenerationResult(text=(nll, greedy)))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"--model {MODEL_ID} does not implement multi-round generation")


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path="forgetbench.evaluate.model.ImageTextModel")
