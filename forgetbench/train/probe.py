"""The forgetting probe: E and F watched while a recipe trains, and a forgetting budget that stops it.

``--probe_every N`` scores a fixed sample of the probe tasks on the live model (no copy of it, no checkpoint) before
training (step 0), every N steps and at the last step. Each task is scored with its own registry hooks, the very
functions its lmms-eval YAML names (``doc_to_visual``, ``doc_to_text``, ``process_results``), greedy generation with
its ``generation_kwargs`` and its primary metric (``metadata.forgetbench``), in points. The sample of a task is the
first ``--probe_limit`` documents of its test split, which is what ``lmms-eval --limit N`` scores, so a probe can be
checked against lmms-eval item for item (the lab's first 32 test documents cover every label of each task).

Tasks: the downstream task (E) is the recipe's ``dataset_name`` when it is a registered task with a forgetbench
task YAML (not lmms-eval's ``scienceqa_img``/``flickr30k_test``: no E there) or a user task under ``--tasks_dir``
(``forgetbench task add``); the upstream tasks (F) are the registry's ``upstream`` tasks of its family (the lab's for
a lab task), or the ``--probe_tasks a,b`` list, which replaces the upstream set (the E side stays the dataset's task)
and may name groups (``forgetbench_lab_upstream``, expanded as lmms-eval's ``--tasks`` expands them) and user tasks
under ``--tasks_dir``. Only free-generation tasks with a per-document metric can be probed.

E and F are in points relative to the step-0 probe of the same sample (mean downstream / upstream delta; negative:
forgot). Every probe goes to the Trainer's logs (``probe/E``, ``probe/F``, ``probe/<task>``; every ``report_to``
integration sees them) and as one line to ``OUTPUT_DIR/forgetting_probe.jsonl``.

``--forgetting_budget P`` (points) stops training when the forgetting is beyond the budget with 95 % confidence:
the upper end of a 95 % paired bootstrap interval of F (documents resampled within each upstream task, both probes of
a document together) is below -P. A probe is *within budget* when its F is at least -P; at each such probe the
trainable parameters are copied to CPU, and on a stop the last within-budget copy is put back into the model before
the recipe saves it. So the saved model is the last probed state within budget.

Before training, a budget is checked against what the probe can see: the minimum detectable effect of F
(:func:`minimum_detectable_effect`: one-sided, alpha 0.05, power 0.8, assuming 10 % of documents flip between two
probes) with the probe's documents. A budget below it is refused in one line naming the ``--probe_limit`` that would
do, unless ``--allow_underpowered_budget``; the manifest records the figures under ``probe.power``.

Under DDP the probe runs on rank 0; its result (scores, the decision) is broadcast, so every rank logs the same
numbers, stops at the same step and restores the same state.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

from transformers import TrainerCallback

from forgetbench import suite
from forgetbench.suite import lab
from forgetbench.train.errors import RecipeError

DEFAULT_EVERY = 50  # the cadence a --forgetting_budget without --probe_every probes at (overhead: docs/recipes.md)
DEFAULT_LIMIT = 32
JSONL = "forgetting_probe.jsonl"
BATCH = 16  # rows per generate() call
RESAMPLES = 2000
CONFIDENCE = 0.95
# The budget's power check (docs/recipes.md): a one-sided test at ALPHA with POWER, and a document's delta between
# two probes taken as FLIP_RATE of documents moving by the whole 100 points (a 0/1 metric), half each way: variance
# FLIP_RATE * 100**2 per document, as forgetbench power assumes without a measured pair.
ALPHA = 0.05
POWER = 0.8
FLIP_RATE = 0.1
FULL_RANGE = 100.0


@dataclass
class ProbeTask:
    name: str
    role: str  # "downstream" (E) or "upstream" (F)
    docs: list
    generation: dict  # generate() keyword arguments
    until: list[str]
    process_results: object
    metric: str
    factor: float  # metric value -> points
    available: int = 0  # documents in the test split (the probe takes the first --probe_limit)
    config: dict | None = None  # the task's lmms-eval config (its doc_to_visual, doc_to_text hooks)


def default_tasks(dataset_name: str | None, tasks_dir: str | None = None) -> tuple[list[str], list[str]]:
    """(downstream, upstream) probe tasks of a recipe trained on ``dataset_name``: a user task under ``tasks_dir``
    is the downstream task, with no default upstream tasks (``--probe_tasks`` names them).

    >>> default_tasks("forgetbench_lab_digits")  # doctest: +NORMALIZE_WHITESPACE
    (['forgetbench_lab_digits'], ['forgetbench_lab_color', 'forgetbench_lab_shape', 'forgetbench_lab_count',
     'forgetbench_lab_printed'])
    >>> default_tasks("forgetbench_pathvqa")
    (['forgetbench_pathvqa'], ['forgetbench_ocrvqa'])
    >>> default_tasks("scienceqa_img")  # lmms-eval's own task: no E side
    ([], ['forgetbench_ocrvqa'])
    """
    if dataset_name not in suite.TASKS:
        return ([dataset_name], []) if dataset_name and _user_task(dataset_name, tasks_dir) else ([], [])
    downstream = [dataset_name] if _has_yaml(dataset_name) else []  # scienceqa_img: no E, F still watched
    if dataset_name.startswith(lab.PREFIX):
        upstream = suite.tasks_in_role("upstream", lab.PREFIX)
    else:
        upstream = [t for t in suite.tasks_in_role("upstream") if not t.startswith(lab.PREFIX)]
    return downstream, [t for t in upstream if t != dataset_name]


def _has_yaml(name: str) -> bool:
    try:
        suite.task_yaml(name)
    except KeyError:  # lmms-eval's own task (scienceqa_img, flickr30k_test): its YAML is not forgetbench's
        return False
    return True


def _user_task(name: str, tasks_dir: str | None) -> bool:
    """Whether ``name`` is a task ``forgetbench task add`` wrote under ``tasks_dir`` (and no registered task)."""
    from forgetbench.suite import user_tasks

    return name not in suite.TASKS and user_tasks.is_user_task(name, tasks_dir)


def expand_groups(names: Sequence[str]) -> list[str]:
    """Task names with every group name (:data:`forgetbench.suite.GROUPS`) replaced by its tasks, in order, as
    lmms-eval's ``--tasks`` expands a group.

    >>> expand_groups(["forgetbench_lab_upstream", "forgetbench_lab_digits"])  # doctest: +NORMALIZE_WHITESPACE
    ['forgetbench_lab_color', 'forgetbench_lab_shape', 'forgetbench_lab_count', 'forgetbench_lab_printed',
     'forgetbench_lab_digits']
    """
    return [task for name in names for task in (suite.GROUPS.get(name) or (name,))]


def _load_task(name: str, role: str, limit: int, tasks_dir: str | None = None) -> ProbeTask:
    user = _user_task(name, tasks_dir)
    if not user and not _has_yaml(name):
        raise RecipeError(f"--probe_tasks {name}: an lmms-eval task; the probe scores forgetbench's own tasks")
    if user:
        from forgetbench.suite import user_tasks

        config = user_tasks.task_config(name, tasks_dir)
    else:
        config = suite.task_config(name)
    if config.get("output_type") != "generate_until":
        raise RecipeError(f"--probe_tasks {name}: a {config.get('output_type')} task; the probe scores "
                          "free-generation (generate_until) tasks only")
    meta = (config.get("metadata") or {}).get("forgetbench") or {}
    metric = meta.get("primary_metric")
    if not callable(config.get("process_results")) or metric is None:
        raise RecipeError(f"--probe_tasks {name}: no process_results or primary metric to score it with")
    if meta.get("scale") == "cider":  # its documents give CIDEr's inputs; the score is the whole corpus's
        raise RecipeError(f"--probe_tasks {name}: scored by CIDEr over the whole corpus; the probe scores "
                          "per-document metrics (exact match, ANLS)")
    kwargs = dict(config.get("generation_kwargs") or {})
    until = kwargs.pop("until", None)
    until = ["\n\n"] if until is None else [until] if isinstance(until, str) else list(until)  # lmms-eval's default
    generation = {"max_new_tokens": int(kwargs.get("max_new_tokens", 256)), "do_sample": False,
                  "num_beams": int(kwargs.get("num_beams", 1))}  # greedy, as the task's temperature 0 asks
    try:
        split = config.get("test_split", "test")
        if user:
            from forgetbench.suite import user_tasks

            docs = user_tasks.load_split(name, split, tasks_dir)
        else:
            docs = suite.load_split(name, split)
    except Exception as exc:  # datasets raises many kinds
        raise RecipeError(f"--probe_tasks {name}: cannot load its test split: {type(exc).__name__}: {exc}") from None
    available = len(docs)
    docs = [docs[i] for i in range(min(limit, available))]
    factor = 100.0 if meta.get("scale", "fraction") == "fraction" else 1.0
    return ProbeTask(name, role, docs, generation, until, config["process_results"], metric, factor, available,
                     config)


def minimum_detectable_effect(counts: Sequence[int], flip_rate: float = FLIP_RATE) -> float:
    """The smallest forgetting (points of F, the mean over the upstream tasks of each task's mean delta) that a probe
    with ``counts`` documents per upstream task detects, one-sided at :data:`ALPHA` with :data:`POWER`:
    ``(z(1 - ALPHA) + z(POWER)) * 100 * sqrt(flip_rate * sum(1 / n_t)) / k`` for k tasks.

    >>> round(minimum_detectable_effect([32] * 4), 2)  # the lab's default probe: 4 tasks x 32 documents
    6.95
    >>> round(minimum_detectable_effect([387] * 4), 2)
    2.0
    """
    z = NormalDist().inv_cdf(1 - ALPHA) + NormalDist().inv_cdf(POWER)
    return z * FULL_RANGE * math.sqrt(flip_rate * sum(1 / n for n in counts)) / len(counts)


def limit_needed(budget: float, available: Sequence[int], flip_rate: float = FLIP_RATE) -> int | None:
    """The smallest ``--probe_limit`` whose minimum detectable effect is at most ``budget`` (each task capped at its
    ``available`` test documents), or None when none is.

    >>> limit_needed(2.0, [1000] * 4), limit_needed(2.0, [150] * 4), limit_needed(0.0, [1000])
    (387, None, None)
    """
    def mde(limit: int) -> float:
        return minimum_detectable_effect([min(limit, n) for n in available], flip_rate)

    high = max(available)
    if budget <= 0 or mde(high) > budget:
        return None
    low = 1
    while low < high:  # mde falls as the limit grows
        middle = (low + high) // 2
        low, high = (low, middle) if mde(middle) <= budget else (middle + 1, high)
    return low


def check_power(budget: float, upstream: list[ProbeTask], allow: bool) -> dict:
    """A budget against the probe's power: refused in one line when it is below the minimum detectable effect,
    unless ``allow``; returns what the manifest records."""
    counts = [len(task.docs) for task in upstream]
    mde = minimum_detectable_effect(counts)
    record = {"minimum_detectable_effect": round(mde, 3), "documents": {t.name: len(t.docs) for t in upstream},
              "flip_rate": FLIP_RATE, "alpha": ALPHA, "power": POWER, "sided": 1, "underpowered": mde > budget,
              "allow_underpowered_budget": allow}
    if mde <= budget or allow:
        return record
    needed = limit_needed(budget, [task.available for task in upstream])
    sizes = f"{counts[0]}" if len(set(counts)) == 1 else f"{min(counts)}-{max(counts)}"
    held = sorted({t.available for t in upstream})
    fix = (f"--probe_limit {needed} would detect {budget:g}" if needed is not None else
           f"no --probe_limit can (the test splits hold {held[0]} documents each)" if len(held) == 1 else
           f"no --probe_limit can (the test splits hold {held[0]} to {held[-1]} documents)")
    raise RecipeError(f"--forgetting_budget {budget:g}: below what the probe can detect: {sizes} documents on each of "
                      f"{len(counts)} upstream tasks detect a forgetting of {mde:.2f} points (one-sided "
                      f"{ALPHA:.0%}, power {POWER:.0%}, assuming {FLIP_RATE:.0%} of documents flip); {fix}; or pass "
                      "--allow_underpowered_budget to run anyway")


def forgetting_probe(args, dataset_name: str | None, resume: str | None = None) -> ForgettingProbe | None:
    """The probe a recipe's :class:`~forgetbench.train.recipe.ForgetbenchArguments` ask for, or None when it is off
    (neither ``--probe_every`` nor ``--forgetting_budget``). Bad values raise :class:`RecipeError`; the sample
    documents are loaded here, before any model."""
    every, budget, names = args.probe_every, args.forgetting_budget, args.probe_tasks
    if every is None and budget is None:
        if names is not None:
            raise RecipeError("--probe_tasks: the probe is off; set --probe_every N (or --forgetting_budget P)")
        return None
    if every is not None and every <= 0:
        raise RecipeError(f"--probe_every {every}: must be a positive number of steps")
    if args.probe_limit <= 0:
        raise RecipeError(f"--probe_limit {args.probe_limit}: must be a positive number of documents per task")
    if budget is not None and not (math.isfinite(budget) and budget >= 0):
        raise RecipeError(f"--forgetting_budget {budget}: must be a number of points >= 0")
    if resume is not None:
        raise RecipeError("--resume_from_checkpoint: not supported with the forgetting probe (its step-0 scores and "
                          "the within-budget state are kept in memory)")
    tasks_dir = getattr(args, "tasks_dir", None)
    downstream, upstream = default_tasks(dataset_name, tasks_dir)
    if names is not None:
        upstream = list(dict.fromkeys(expand_groups([n.strip() for n in names.split(",") if n.strip()])))
        for name in upstream:
            if name not in suite.TASKS and not _user_task(name, tasks_dir):
                what = (f"a forgetbench suite task, group, or user task under --tasks_dir {tasks_dir}" if tasks_dir
                        else "a forgetbench suite task or group")
                raise RecipeError(f"--probe_tasks {name}: not {what} (known: "
                                  f"{', '.join(t for t in suite.TASKS if not t.endswith('_closed'))})")
            if name in downstream:
                raise RecipeError(f"--probe_tasks {name}: the training task; it is probed as the downstream task")
        if not upstream:
            raise RecipeError("--probe_tasks: empty")
    elif not upstream:
        raise RecipeError(f"--probe_every: --dataset_name {dataset_name} is not a forgetbench task, so the probe has "
                          "no default tasks; name the upstream tasks with --probe_tasks a,b")
    started = time.perf_counter()
    tasks = [_load_task(n, "downstream", args.probe_limit, tasks_dir) for n in downstream]
    tasks += [_load_task(n, "upstream", args.probe_limit, tasks_dir) for n in upstream]
    power = None
    if budget is not None:
        power = check_power(budget, [t for t in tasks if t.role == "upstream"],
                            bool(getattr(args, "allow_underpowered_budget", False)))
    probe = ForgettingProbe(tasks, every or DEFAULT_EVERY, args.probe_limit, budget)
    probe.power = power
    probe.load_seconds = time.perf_counter() - started
    return probe


def _distributed():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


class _QuietRNG:
    """Saves torch's (CPU and CUDA), Python's and NumPy's global random states and puts them back on exit, so the
    probe cannot shift training's random stream (dropout, data order)."""

    def __enter__(self):
        import numpy as np
        import torch

        self.states = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
                       random.getstate(), np.random.get_state())

    def __exit__(self, *exc):
        import numpy as np
        import torch

        cpu, cuda, python, numpy = self.states
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(python)
        np.random.set_state(numpy)


def f_interval(deltas: dict[str, list[float]], seed: int = 0) -> list[float]:
    """95 % paired bootstrap interval of F = mean over tasks of the mean per-document delta: documents are drawn
    with replacement within each task (a document's two probes stay together), with a private generator.

    >>> f_interval({"a": [0.0, 0.0], "b": [0.0]})
    [0.0, 0.0]
    >>> lo, hi = f_interval({"a": [-100.0] * 8 + [0.0] * 24, "b": [0.0] * 32})  # F = -12.5
    >>> -25 < lo < -12.5 < hi < -5
    True
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    total = np.zeros(RESAMPLES)
    for values in deltas.values():
        d = np.asarray(values, dtype=float)
        total += d[rng.integers(0, len(d), size=(RESAMPLES, len(d)))].mean(axis=1)
    total /= len(deltas)
    tail = (1 - CONFIDENCE) / 2
    return [float(q) for q in np.quantile(total, [tail, 1 - tail])]


class ForgettingProbe(TrainerCallback):
    """See the module docstring. ``run_recipe`` installs it and binds ``trainer`` (for logging)."""

    def __init__(self, tasks: list[ProbeTask], every: int, limit: int, budget: float | None):
        self.tasks, self.every, self.limit, self.budget = tasks, every, limit, budget
        self.trainer = None
        self.batches: dict[str, list] = {}  # task -> [(doc indices, encoded inputs)], rank 0
        self.base: dict[str, list[float]] | None = None  # per-document step-0 scores
        self.kept: tuple[int, dict] | None = None  # (step, CPU copy of the trainable parameters) within budget
        self.stopped_at = self.restored = None
        self.reason = "no budget: watched only" if budget is None else "within budget at every probe"
        self.last: dict | None = None
        self.seconds = 0.0  # every probe, start to end (scoring, logging, the kept copy), on this rank
        self.load_seconds = 0.0  # loading the documents, before the model
        self.power: dict | None = None  # the budget's power check (check_power); None without a budget
        self.probes = 0

    # -- scoring (rank 0) ----------------------------------------------------------------------------------------

    def _prompt(self, processor, context: str, n_images: int) -> str:
        # The same rendering as forgetbench.evaluate.model.ImageTextModel.prompt: train may not import evaluate
        # (docs/architecture.md), and evaluate may import only checkpoint, so the three lines cannot be shared
        # through the suite. tests/test_probe.py holds the two equal by comparing with lmms-eval's scores.
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": context}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)

    def _encode(self, model, processor) -> None:
        import torch

        device = next(model.parameters()).device
        for task in self.tasks:
            config = task.config or suite.task_config(task.name)
            visuals = [[v for v in (config["doc_to_visual"](doc) or []) if v is not None] for doc in task.docs]
            texts = [self._prompt(processor, config["doc_to_text"](doc), len(images))
                     for doc, images in zip(task.docs, visuals, strict=True)]
            order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths together
            batches = []
            for start in range(0, len(order), BATCH):
                rows = order[start : start + BATCH]
                images = [image for i in rows for image in visuals[i]]
                inputs = processor(text=[texts[i] for i in rows], images=images or None, padding=True,
                                   padding_side="left", return_tensors="pt").to(device)
                if "pixel_values" in inputs and model.dtype != torch.float32:
                    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
                batches.append((rows, inputs))
            self.batches[task.name] = batches

    def _score(self, model, processor) -> dict[str, list[float]]:
        """Per-document scores of every task, on the live model, leaving it exactly as it was."""
        import torch

        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with _QuietRNG(), torch.no_grad():
                if not self.batches:
                    self._encode(model, processor)
                return {task.name: self._score_task(model, processor, task) for task in self.tasks}
        finally:
            for module, training in modes:
                module.training = training

    def _score_task(self, model, processor, task: ProbeTask) -> list[float]:
        tokenizer = processor.tokenizer
        scores = [0.0] * len(task.docs)
        for rows, inputs in self.batches[task.name]:
            output = model.generate(**inputs, **task.generation, pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, text in zip(rows, texts, strict=True):
                for stop in task.until:
                    if stop and stop in text:
                        text = text.split(stop, 1)[0]
                value = task.process_results(task.docs[i], [text.strip()])[task.metric]
                scores[i] = float(value["value"] if isinstance(value, dict) else value) * task.factor
        return scores

    def _measure(self, step: int, model, processor) -> dict:
        started = time.perf_counter()
        items = self._score(model, processor)
        if self.base is None:
            self.base = items
        record: dict = {"step": step, "E": None, "F": None}
        deltas = {name: [a - b for a, b in zip(items[name], self.base[name], strict=True)] for name in items}
        scores = {name: sum(v) / len(v) for name, v in items.items()}
        for key, role in (("E", "downstream"), ("F", "upstream")):
            names = [t.name for t in self.tasks if t.role == role]
            if names:
                record[key] = sum(sum(deltas[n]) / len(deltas[n]) for n in names) / len(names)
        record["F_ci"] = f_interval({t.name: deltas[t.name] for t in self.tasks if t.role == "upstream"})
        record["scores"] = scores
        record["deltas"] = {name: sum(v) / len(v) for name, v in deltas.items()}
        if self.budget is not None:
            record["within_budget"] = record["F"] >= -self.budget
            record["stop"] = record["F_ci"][1] < -self.budget
        record["seconds"] = time.perf_counter() - started
        return record

    # -- the callback --------------------------------------------------------------------------------------------

    def _probe(self, args, state, control, model, processor) -> None:
        started = time.perf_counter()
        try:
            self._probe_once(args, state, control, model, processor)
        finally:
            self.seconds += time.perf_counter() - started

    def _probe_once(self, args, state, control, model, processor) -> None:
        dist = _distributed()
        record = self._measure(state.global_step, model, processor) if state.is_world_process_zero else None
        if dist is not None:  # every rank takes rank 0's result: the same logs, the same stop
            box = [record]
            dist.broadcast_object_list(box, src=0)
            record = box[0]
        self.probes += 1
        self.last = {"step": record["step"], "E": record["E"], "F": record["F"]}
        if state.is_world_process_zero:
            with open(Path(args.output_dir) / JSONL, "a") as out:
                out.write(json.dumps(record) + "\n")
                out.flush()
        # Logged through transformers.Trainer.log, not the trainer's own log: it appends to state.log_history and
        # calls every callback's on_log (TensorBoard, W&B, ... see the numbers at this step), while TRL's
        # SFTTrainer.log would also flush and reset its running training metrics into this record.
        if self.trainer is not None:
            from transformers import Trainer

            logs = {f"probe/{name}": value for name, value in record["scores"].items()}
            logs |= {f"probe/{k}": record[k] for k in ("E", "F") if record[k] is not None}
            Trainer.log(self.trainer, logs)
        if self.budget is None:
            return
        if record["within_budget"]:
            self.kept = (record["step"], {name: p.detach().to("cpu", copy=True)
                                          for name, p in model.named_parameters() if p.requires_grad})
        if record["stop"]:
            self._restore(model)
            lo, hi = record["F_ci"]
            self.stopped_at = record["step"]
            self.reason = (f"step {record['step']}: F {record['F']:.1f} points, 95% interval [{lo:.1f}, {hi:.1f}] "
                           f"below the budget -{self.budget:g}; restored the step-{self.restored} state")
            control.should_training_stop = True

    def _restore(self, model) -> None:
        import torch

        step, saved = self.kept
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in saved:
                    param.copy_(saved[name].to(param.device))
        self.restored = step

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        from accelerate.state import AcceleratorState, DistributedType

        accel = AcceleratorState()
        plugin = getattr(accel, "deepspeed_plugin", None)
        if accel.distributed_type == DistributedType.FSDP or (plugin is not None and plugin.zero_stage == 3):
            raise RecipeError("--probe_every: the probe needs the whole model on rank 0, not a shard (FSDP, ZeRO-3)")
        if state.is_world_process_zero:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.output_dir) / JSONL).write_text("")
        self._probe(args, state, control, model, processing_class)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if step % self.every == 0 or step >= state.max_steps:
            self._probe(args, state, control, model, processing_class)

    def manifest_entry(self) -> dict:
        """What the manifest records under ``probe``."""
        return {"every": self.every, "limit": self.limit,
                "tasks": {role: [t.name for t in self.tasks if t.role == role] for role in ("downstream", "upstream")},
                "budget": self.budget, "stopped_at_step": self.stopped_at, "restored_step": self.restored,
                "reason": self.reason, "probes": self.probes, "last": self.last, "seconds": round(self.seconds, 3),
                "load_seconds": round(self.load_seconds, 3), "power": self.power,
                "log": JSONL}
