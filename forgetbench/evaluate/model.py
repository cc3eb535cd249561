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

A document whose image cannot be decoded is *unscorable*, never dropped and never fatal: it is answered ``""``
(generation) or scored +inf for every choice (likelihood, so lmms-eval picks its first choice), a warning names
the task and doc id, and every such item is listed in ``unscorable.json`` (``unscorable.rank<R>.json`` per rank
under data parallelism) in lmms-eval's ``--output_path`` folder, or ``unscorable_dir=DIR``; ``forgetbench
compare`` reports the counts per task (docs/faults.md). The same file records the installed lmms-eval and
forgetbench versions (``versions``), which ``forgetbench compare`` pairs runs on (docs/metrics.md, "Pairing").
Weights load from safetensors only.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import torch
from lmms_eval import utils
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms

MODEL_ID = "forgetbench"
UNSCORABLE_NAME = "unscorable.json"
logger = logging.getLogger(__name__)



def _selected(cache, indices: torch.Tensor):
    """A cache holding row ``indices`` of ``cache``'s batch, ``cache`` itself untouched.

    A plain ``DynamicLayer`` selects and appends by building new tensors, so shallow copies of the cache and its
    layers are enough: no copy of the whole batch's keys and values per chunk of choices (the cost that dominated
    100-way scoring). Any other layer kind (sliding window, quantized, ...) is deep-copied first, as before."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers is not None and all(type(layer) is DynamicLayer for layer in layers):
        selected = copy.copy(cache)
        selected.layers = [copy.copy(layer) for layer in layers]
    else:
        selected = copy.deepcopy(cache)
    selected.batch_select_indices(indices)
    return selected

def installed_versions() -> dict[str, str | None]:
    """The installed ``lmms-eval`` and ``forgetbench`` distributions' versions (``importlib.metadata``), None
    for one not installed as a distribution."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("lmms-eval", "forgetbench"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _strict_images() -> None:
    """A truncated image is an unscorable document, as training refuses it: lmms-eval sets PIL's global
    LOAD_TRUNCATED_IMAGES when it imports its task module, and datasets then decodes such an image padded with grey.
    Set before this wrapper reads any document (datasets decodes a row when the wrapper asks for its visuals)."""
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False


class UnscorableImage(Exception):
    """A request's document image cannot be decoded (recorded in :attr:`ImageTextModel.unscorable`)."""


def _lmms_eval_output_path() -> Path | None:
    """The ``--output_path`` folder of the lmms-eval command line this process runs, if it is one."""
    argv = sys.argv
    if "lmms_eval" not in argv[0].replace("-", "_") or "--output_path" not in argv[:-1]:
        return None
    path = Path(argv[argv.index("--output_path") + 1])
    return path.parent if path.suffix in (".json", ".jsonl") else path


class ImageTextModel(lmms):
    is_simple = True
    CHOICES_PER_PASS = 64  # closed-set choices scored in one forward pass over a cached prefix
    UNSCORED = GenerationResult(text=(float("inf"), False))  # every choice of an unscorable document

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
        prefix_cache: bool | str = True,
        device_map: str | None = None,
        unscorable_dir: str | None = None,
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
        if getattr(self.processor, "chat_template", None) is None:  # e.g. InstructBLIP's (docs/methods.md)
            raise ValueError(f"--model {MODEL_ID}: {pretrained}: its processor has no chat template, which prompts "
                             "are rendered with (and training renders them with)")
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # generation appends on the right of every row
        model = AutoModelForImageTextToText.from_pretrained(
            path,
            dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,  # a pickled .bin checkpoint is refused
            # device_map=auto shards a model too large for one GPU over every visible GPU (and CPU memory).
            **({"device_map": device_map} if device_map else {}),
        )
        if adapter:
            from peft import PeftModel

            if Path(adapter).is_dir() and not (Path(adapter) / "adapter_model.safetensors").is_file():
                raise ValueError(f"--model {MODEL_ID}: adapter={adapter} has no adapter_model.safetensors "
                                 "(weights load from safetensors only)")

            # Merged for speed: the adapter's answers equal the merged checkpoint's (a test holds this).
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        if device_map:
            self._device = next(model.parameters()).device  # inputs go where the first layers are
            self.model = model.eval()
        else:
            self.model = model.to(self._device).eval()
        # "auto": start at max_batch_size (64 unless given) and halve on an out-of-memory error; a fixed batch size
        # also backs off that way, and later batches start at the size that fit.
        auto = str(batch_size).startswith("auto")
        self.batch_size_per_gpu = int(max_batch_size or 64) if auto else int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.pretrained, self.adapter = pretrained, adapter
        # lmms-eval passes model_args as strings: "False"/"false"/"0" turn the shared-prefix cache off.
        self.prefix_cache = str(prefix_cache).lower() not in ("false", "0", "no")
        self.unscorable: dict[tuple, str] = {}  # (task, split, doc_id) -> why its image cannot be read
        folder = Path(unscorable_dir) if unscorable_dir else _lmms_eval_output_path()
        name = UNSCORABLE_NAME if self._world_size == 1 else f"unscorable.rank{self._rank}.json"
        self.unscorable_file = folder / name if folder is not None else None
        self._write_unscorable()  # at once: a stale file from an earlier run into the same folder is replaced

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    # -- prompts -------------------------------------------------------------------------------------------------

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        """The document's images; :class:`UnscorableImage` when one cannot be decoded (datasets decodes it when
        the document is read, the task's ``doc_to_visual`` converts it)."""
        if doc_to_visual is None:
            return []
        import warnings

        from PIL import Image

        try:
            with warnings.catch_warnings():  # over PIL's limit is refused, as training refuses it (docs/faults.md)
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                visuals = [visual for visual in (doc_to_visual(self.task_dict[task][split][doc_id]) or [])
                           if visual is not None]
            empty = next((v for v in visuals if isinstance(v, Image.Image) and 0 in v.size), None)
            if empty is not None:
                raise ValueError(f"zero-size image ({empty.size[0]}x{empty.size[1]})")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            self._record_unscorable(task, split, doc_id, exc)
            raise UnscorableImage(f"{task} doc {doc_id}") from None
        return visuals

    def _record_unscorable(self, task, split, doc_id, exc: BaseException) -> None:
        key = (task, split, doc_id)
        if key in self.unscorable:
            return
        # forgetbench's tasks say why (suite.images.UnreadableImage.reason); PIL names its file object, dropped
        reason = getattr(exc, "reason", None) or re.sub(r" <[^>]*>", "", " ".join(f"{type(exc).__name__}: {exc}"
                                                                                   .split()))
        self.unscorable[key] = reason
        logger.warning("forgetbench: task %s doc %s: its image cannot be read (%s); answered without scoring it "
                       "(unscorable %d so far%s)", task, doc_id, reason, len(self.unscorable),
                       f", listed in {self.unscorable_file}" if self.unscorable_file else "")
        self._write_unscorable()

    def _write_unscorable(self) -> None:
        """``unscorable.json``, rewritten whole (temp file, then rename) at every new item."""
        if self.unscorable_file is None:
            return
        items = [{"task": t, "split": s, "doc_id": d, "reason": r} for (t, s, d), r in self.unscorable.items()]
        counts: dict[str, int] = {}
        for item in items:
            counts[item["task"]] = counts.get(item["task"], 0) + 1
        # "versions": the installed lmms-eval and forgetbench distributions, which compare pairs on (lmms-eval's
        # own lmms_eval_version is the git describe of whatever repository holds site-packages: docs/lmms-eval.md).
        data = {"schema": "forgetbench.unscorable/1", "pretrained": self.pretrained, "rank": self._rank,
                "versions": installed_versions(), "counts": counts, "items": items}
        folder = self.unscorable_file.parent
        tmp = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.unscorable_file.name}.", suffix=".tmp", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2)
            os.replace(tmp, self.unscorable_file)
        except OSError as exc:  # name the file asked for, not the temp file
            raise OSError(exc.errno, exc.strerror, str(self.unscorable_file)) from exc
        finally:
            if tmp is not None and Path(tmp).exists():
                Path(tmp).unlink()

    def _each_readable(self, run, items: list, unscorable) -> list:
        """``run(items)``; when an item's image cannot be read, each item on its own, and the unreadable ones
        answered ``unscorable(item)`` (only a batch holding such an item pays for the split)."""
        try:
            return run(items)
        except UnscorableImage:
            out = []
            for item in items:
                try:
                    out += run([item])
                except UnscorableImage:
                    out.append(unscorable(item))
            return out

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
        _strict_images()
        collator = utils.Collator(
            [request.args for request in requests],
            sort_fn=lambda args: -len(args[0]),  # similar lengths together: less padding
            grouping=True,  # by gen_kwargs: one generate() call cannot mix them
        )
        answers = []
        # batch_fn is asked at every row: after a back-off, later batches are cut at the size that fit.
        for batch in collator.get_batched(n=self.batch_size, batch_fn=lambda index, rows: self.batch_size):
            answers += self._backing_off(list(batch), lambda rows: self._each_readable(self._generate_batch, rows,
                                                                                       lambda row: ""))
        return collator.get_original(answers)

    def _backing_off(self, rows: list, run) -> list:
        """``run(rows)``, split in halves on an out-of-memory error (down to one row, which then raises)."""
        try:
            return run(rows)
        except torch.OutOfMemoryError:
            if len(rows) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(rows) // 2
            self.batch_size_per_gpu = min(self.batch_size_per_gpu, half)
            return self._backing_off(rows[:half], run) + self._backing_off(rows[half:], run)

    def _generate_batch(self, batch: list) -> list[str]:
        answers = []
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
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Summed negative log-likelihood of each continuation given its context and images, and whether it is the
        greedy continuation. lmms-eval 0.7.3 picks the choice with the smallest value (``argmin``), so this is a
        loss; it travels inside ``GenerationResult`` because lmms-eval turns a bare ``(float, bool)`` into a string.

        A closed-set task asks every choice of a document with the same context and images: with ``prefix_cache``
        (the default) the image and question are encoded once and all choices are scored from the cached prefix
        (past key values, choices batched); ``prefix_cache=False`` scores one full sequence per choice.
        """
        _strict_images()
        arguments = [request.args for request in requests]
        results: list[GenerationResult | None] = [None] * len(arguments)
        if self.prefix_cache:
            groups: dict[tuple, list[int]] = {}
            for index, (context, _continuation, _visual, doc_id, task, split) in enumerate(arguments):
                groups.setdefault((task, split, doc_id, context), []).append(index)
            # Documents of one batch share a forward pass over their prefixes (and one over all their choices).
            batches = list(groups.values())
            for start in range(0, len(batches), self.batch_size):
                chunk = batches[start : start + self.batch_size]
                scored = self._each_readable(self._score_shared_prefixes,
                                             [[arguments[i] for i in indexes] for indexes in chunk],
                                             lambda group: [self.UNSCORED] * len(group))
                for indexes, group_results in zip(chunk, scored, strict=True):
                    for index, result in zip(indexes, group_results, strict=True):
                        results[index] = result
        rest = [i for i, result in enumerate(results) if result is None]
        for start in range(0, len(rest), self.batch_size):
            batch = rest[start : start + self.batch_size]
            scored = self._each_readable(self._score_full, [arguments[i] for i in batch], lambda args: self.UNSCORED)
            for index, result in zip(batch, scored, strict=True):
                results[index] = result
        return results

    def _continuation_ids(self, prompt: str, continuation: str) -> list[int] | None:
        """The continuation's tokens when tokenizing prompt + continuation keeps the prompt's own tokens as its
        prefix (the usual case); None when a merge crosses the boundary, so that choice is scored in full."""
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = self.tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
        if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
            return None
        return full_ids[len(prompt_ids) :]

    @property
    def _position_ids_are_3d(self) -> bool:
        """Qwen2-VL's and Qwen2.5-VL's M-RoPE: positions are (time, height, width) triples from the model's own rope
        index, which places an image's tokens on its grid and the text after it from the grid's largest side."""
        return hasattr(self.model, "model") and hasattr(self.model.model, "get_rope_index")

    def _prefix_positions(self, inputs) -> torch.Tensor:
        """Position ids of a left-padded batch of prefixes: ``(batch, length)`` counting real tokens only, or with
        M-RoPE ``(3, batch, length)`` from the model's rope index (which skips padding). Given explicitly, so that
        the continuations can be placed after them: transformers 5.23's Qwen2-VL derives a cached pass's positions
        from the whole attention mask (prefix and new tokens), a length that does not fit the new tokens."""
        mask = inputs["attention_mask"]
        if not self._position_ids_are_3d:
            return (mask.cumsum(-1) - 1).clamp(min=0)
        grids = {key: inputs[key] for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
                 if key in inputs}
        types = inputs.get("mm_token_type_ids")
        if types is None:
            types = torch.zeros_like(inputs["input_ids"])
        positions, _deltas = self.model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=types,
                                                             attention_mask=mask, **grids)
        return positions

    def _score_shared_prefixes(self, groups: list[list[tuple]]) -> list[list[GenerationResult | None]]:
        """Score each group's choices (one group: one document's context and images) from its cached prefix.

        The prefixes are encoded in one left-padded batch (positions count real tokens only; M-RoPE triples come
        from the model's rope index, :meth:`_prefix_positions`), then every choice of every group in one batch over
        the cached keys and values, each row reading its own group's prefix and placed after its last position."""
        prompts, images, continuations = [], [], []
        for batch in groups:
            context, _, doc_to_visual, doc_id, task, split = batch[0]
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            prompts.append(self.prompt(context, len(visuals)))
            images.extend(visuals)
            continuations.append([self._continuation_ids(prompts[-1], args[1]) for args in batch])
        rows = [(g, i) for g, ids in enumerate(continuations) for i, c in enumerate(ids) if c is not None]
        results: list[list[GenerationResult | None]] = [[None] * len(batch) for batch in groups]
        if not rows:
            return results
        inputs = self._encode(prompts, images, "left")
        mask = inputs["attention_mask"]
        with torch.inference_mode():
            positions = self._prefix_positions(inputs)
            prefix = self.model(**inputs, position_ids=positions, use_cache=True)
            first = torch.log_softmax(prefix.logits[:, -1].float(), dim=-1)
            longest = max(len(continuations[g][i]) for g, i in rows)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(rows), longest), pad, dtype=torch.long, device=self._device)
            for row, (g, i) in enumerate(rows):
                ids[row, : len(continuations[g][i])] = torch.tensor(continuations[g][i], device=self._device)
            owner = torch.tensor([g for g, _ in rows], device=self._device)
            # A continuation's tokens follow its prefix's last position (left padding: the last column is real).
            following = positions[..., -1:] + 1 + torch.arange(longest, device=self._device)
            log_probs = []
            # Choices in chunks, each over its own copy of the rows' prefixes: a 100-way question with a long label
            # list would otherwise copy its prefix's keys and values 100 times at once.
            for start in range(0, len(rows), self.CHOICES_PER_PASS):
                chunk = slice(start, start + self.CHOICES_PER_PASS)
                cache = _selected(prefix.past_key_values, owner[chunk])  # one copy of its group's prefix per choice
                # Right padding after each continuation only follows its real tokens, so causal attention keeps it
                # from changing them.
                attention = torch.cat([mask[owner[chunk]], torch.ones_like(ids[chunk])], dim=1)
                chunk_positions = following.index_select(-2, owner[chunk])
                logits = self.model(input_ids=ids[chunk], attention_mask=attention, past_key_values=cache,
                                    position_ids=chunk_positions, use_cache=True).logits
                log_probs.append(torch.log_softmax(logits.float(), dim=-1))
            log_probs = torch.cat(log_probs)
        for row, (g, i) in enumerate(rows):
            targets = ids[row, : len(continuations[g][i])]
            # Token 0 is predicted by the prefix's last position, token j by continuation position j - 1.
            predicted = torch.cat([first[g][None], log_probs[row, : len(targets) - 1]], dim=0)
            nll = -predicted.gather(-1, targets[:, None]).sum().item()
            greedy = bool((predicted.argmax(dim=-1) == targets).all())
            results[g][i] = GenerationResult(text=(nll, greedy))
        return results

    def _score_full(self, batch: list[tuple]) -> list[GenerationResult]:
        """One forward pass over prompt + continuation per request (batched, right padding)."""
        results = []
        fulls, n_continuation, images = [], [], []
        for context, continuation, doc_to_visual, doc_id, task, split in batch:
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            prompt = self.prompt(context, len(visuals))
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
