"""Mitigations of forgetting: switches on every recipe, and post-hoc steps on finished checkpoints.

Switches (fields of :class:`~forgetbench.train.recipe.ForgetbenchArguments`, checked by :func:`plan_mitigations`
before any model is loaded; docs/mitigations.md):

- replay, ``--replay_tasks a,b --replay_ratio R``: registered tasks' train rows mixed into the target data
  (:func:`forgetbench.train.data.with_replay`);
- an anchor to the base model while training, ``--kl_weight W`` (LwF-style KL to the base's next-token
  distributions) and ``--l2sp_weight W`` (L2-SP): :class:`Anchor`, added to TRL's SFT loss by the trainer that
  :func:`anchored_trainer` returns;
- WiSE-FT, ``--wise_alphas a,b``: :func:`wise_ft` after training, one ``OUTPUT_DIR/wise-<alpha>/`` checkpoint each.

Post-hoc, on checkpoints already written: :func:`wise_ft` and :func:`merge_adapters` (PEFT's
``add_weighted_adapter``: TIES, DARE), also as ``python -m forgetbench.train.mitigations {wise,merge} ...``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import shutil
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from forgetbench.checkpoint import (
    MANIFEST_NAME,
    library_versions,
    manifest_bytes,
    manifest_path,
    read_manifest,
    resolve_model,
    same_model,
    write_model_folder,
)
from forgetbench.train.recipe import RecipeError

WISE_PREFIX = "wise-"
# add_weighted_adapter's combination types, and those that prune to a density first (TIES, DARE, magnitude).
COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
WITH_DENSITY = tuple(c for c in COMBINATIONS if c.startswith(("ties", "dare", "magnitude")))
# Files save_pretrained writes for the weights themselves; a checkpoint's other top-level files are its processor's.
_MODEL_FILES = ("config.json", "generation_config.json", MANIFEST_NAME)


class MitigationError(RecipeError):
    """Bad input to a mitigation; printed as one line (exit status 2)."""


@dataclass(frozen=True)
class Mitigations:
    """What a recipe run was asked to do against forgetting (all off by default)."""

    replay_tasks: tuple[str, ...] = ()
    replay_ratio: float | None = None
    kl_weight: float | None = None  # None: off; 0: the term is measured and logged, not trained on
    l2sp_weight: float | None = None
    wise_alphas: tuple[float, ...] = ()

    @property
    def anchored(self) -> bool:
        return self.kl_weight is not None or self.l2sp_weight is not None


def parse_alphas(text: str, flag: str = "--wise_alphas") -> tuple[float, ...]:
    """WiSE-FT mixing coefficients, ``"0.25,0.5"``: each in [0, 1] (0: the base, 1: the tuned model), no repeats.

    >>> parse_alphas("0.25,0.5,0.75")
    (0.25, 0.5, 0.75)
    """
    alphas = []
    for item in (part.strip() for part in text.split(",")):
        try:
            alpha = float(item)
        except ValueError:
            raise MitigationError(f"{flag} {text}: {item!r} is not a number") from None
        if not 0 <= alpha <= 1:  # NaN fails too
            raise MitigationError(f"{flag} {text}: {item} is outside [0, 1] (0: the base model, 1: the tuned one)")
        if alpha in alphas:
            raise MitigationError(f"{flag} {text}: {item} is given twice")
        alphas.append(alpha)
    return tuple(alphas)


def plan_mitigations(args, method, dataset_name: str | None) -> Mitigations:
    """The mitigations ``args`` (:class:`~forgetbench.train.recipe.ForgetbenchArguments`) ask for, for ``method``
    (a :class:`~forgetbench.train.methods.Method`) trained on ``dataset_name``; a bad value raises
    :class:`~forgetbench.train.recipe.RecipeError` naming the flag, before anything is loaded."""
    from forgetbench import suite

    tasks: tuple[str, ...] = ()
    if args.replay_tasks is not None or args.replay_ratio is not None:
        if args.replay_tasks is None:
            raise RecipeError("--replay_ratio: needs --replay_tasks TASK[,TASK...] (the tasks to replay)")
        if args.replay_ratio is None:
            raise RecipeError("--replay_tasks: needs --replay_ratio R (the share of replay rows, between 0 and 1)")
        tasks = tuple(t.strip() for t in args.replay_tasks.split(",") if t.strip())
        if not tasks:
            raise RecipeError("--replay_tasks: empty")
        for task in tasks:
            if task not in suite.TASKS:
                raise RecipeError(f"--replay_tasks {task}: not a forgetbench suite task (known: "
                                  f"{', '.join(t for t in suite.TASKS if not t.endswith('_closed'))})")
            if task == dataset_name:
                raise RecipeError(f"--replay_tasks {task}: the training task itself (--dataset_name)")
            if tasks.count(task) > 1:
                raise RecipeError(f"--replay_tasks {task}: given twice")
        if not 0 < args.replay_ratio < 1:
            raise RecipeError(f"--replay_ratio {args.replay_ratio}: must be between 0 and 1, exclusive (the share of "
                              "replay rows in the training stream)")
    for flag, weight in (("--kl_weight", args.kl_weight), ("--l2sp_weight", args.l2sp_weight)):
        if weight is not None and not (math.isfinite(weight) and weight >= 0):
            raise RecipeError(f"{flag} {weight}: must be a finite number >= 0 (0: log the term, do not train on it)")
    alphas: tuple[float, ...] = ()
    if args.wise_alphas is not None:
        if not method.mergeable:
            raise RecipeError(f"--wise_alphas: {method.name}'s soft prompt is not folded into the weights, so there "
                              "are no tuned weights to interpolate with the base")
        alphas = parse_alphas(args.wise_alphas)
    return Mitigations(tasks, args.replay_ratio if tasks else None, args.kl_weight, args.l2sp_weight, alphas)


def manifest_entry(plan: Mitigations, trainer=None, replay_rows: dict | None = None) -> dict:
    """The manifest's ``mitigations`` entry: one key per mitigation, None when it is off."""
    from forgetbench.train.data import REPLAY_STOPPING

    history = trainer.state.log_history if trainer is not None else []
    anchor = getattr(trainer, "anchor", None)

    def term(weight, key: str, **extra):  # the unweighted term at each log, as "losses" records the loss
        logged = [[log["step"], log[key]] for log in history if key in log]
        return None if weight is None else {"weight": weight, **extra, "logged": logged}

    return {
        "replay": None if not plan.replay_tasks else {
            "tasks": list(plan.replay_tasks), "ratio": plan.replay_ratio, "stopping_strategy": REPLAY_STOPPING,
            "rows": replay_rows},
        "kl": term(plan.kl_weight, "anchor/kl", base=anchor.base_kind if anchor else None),
        "l2sp": term(plan.l2sp_weight, "anchor/l2sp"),
        "wise": None if not plan.wise_alphas else {
            "alphas": list(plan.wise_alphas), "folders": [wise_folder(a) for a in plan.wise_alphas]},
    }


# --- the anchor: KL to the base model and L2-SP ---------------------------------------------------------------------


def _is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def transformers_model(model):
    """The transformers model inside a PEFT model (or the model itself)."""
    return model.get_base_model() if _is_peft(model) else model


def frozen_reference(model):
    """A frozen copy of ``model`` in which only the trainable parameters are copied: the frozen ones are the very
    same tensors (shared through ``deepcopy``'s memo), since training never changes them. Memory: one copy of the
    trainable parameters."""
    memo = {id(p): p for p in model.parameters() if not p.requires_grad}
    reference = copy.deepcopy(model, memo)
    reference.__dict__.pop("forward", None)  # an instance-level forward (TRL's fused head) closes over the original
    reference.requires_grad_(False)
    return reference


def _backbone_inputs(inputs: dict) -> dict:
    """A training batch as the backbone (``model.base_model``) takes it: everything but the labels."""
    skip = {"labels", "shift_labels", "num_items_in_batch", "fused_lm_head", "output_router_logits"}
    return {"use_cache": False, **{k: v for k, v in inputs.items() if k not in skip}}


def _next_token_logits(model, hidden, mask):
    """Logits of the positions whose next token is an answer token (``mask`` over positions 0..L-2), in float32."""
    head = model.get_output_embeddings()
    return head(hidden[:, :-1][mask.to(hidden.device)].to(head.weight.device)).float()


class Anchor:
    """What ties the model being tuned to its base: KL(base || tuned) of the next-token distributions on the answer
    tokens (LwF, Li & Hoiem 2016) and the squared distance ||theta - theta_0||^2 of the trainable parameters from
    their values at the start (L2-SP, Li et al. 2018).

    ``model``: a PEFT model, whose base is the same model with the adapter disabled (no second copy), or a plain
    model whose trainable parameters are set, whose base is :func:`frozen_reference`. Build it before training
    starts (and before a checkpoint is resumed): the starting values are read here. The tuned side of the KL is the
    backbone's last hidden state of the training forward itself (a forward hook keeps it, with its graph, for the
    first forward run inside :meth:`watch`), projected through the LM head at the answer positions only.
    """

    def __init__(self, model, kl: bool = True, l2sp: bool = True):
        self.model = model
        self.peft = _is_peft(model)
        self.reference = frozen_reference(model) if kl and not self.peft else None
        self.base_kind = None if not kl else "the same model with the adapter disabled" if self.peft else \
            "a frozen copy of the trainable parameters (the frozen ones shared)"
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        start = dict(self.reference.named_parameters()) if self.reference is not None else {}
        self.start = [(p, start[name] if name in start else p.detach().clone()) for name, p in trainable] \
            if l2sp else []
        self._hidden, self._armed = None, False
        backbone = transformers_model(model).base_model
        self._hook = backbone.register_forward_hook(self._keep) if kl else None

    def _keep(self, module, args, output) -> None:
        if self._armed and self._hidden is None:
            self._hidden = output.last_hidden_state

    @contextmanager
    def watch(self):
        """Keep the backbone's output of the first forward run inside (the training forward)."""
        self._hidden, self._armed = None, True
        try:
            yield
        finally:
            self._armed = False

    @contextmanager
    def _base(self):
        """The base model, in the live model's train/eval mode, under a forked RNG (the base pass cannot shift the
        training's random stream). Modes are not switched: bitsandbytes' CPU path repacks 4-bit weights in eval."""
        import torch

        live = transformers_model(self.model)
        devices = [live.device] if live.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            if self.reference is not None:
                self.reference.train(live.training)
                yield self.reference
                return
            from peft.utils.other import AuxiliaryTrainingWrapper

            # PEFT's disable_adapter leaves modules_to_save active under prompt learning: turn them off here too.
            prompt = self.model.peft_config[self.model.active_adapter].is_prompt_learning
            wrappers = [m for m in self.model.modules() if isinstance(m, AuxiliaryTrainingWrapper)] if prompt else []
            with self.model.disable_adapter():
                for wrapper in wrappers:
                    wrapper.enable_adapters(False)
                try:
                    yield live
                finally:
                    for wrapper in wrappers:
                        wrapper.enable_adapters(True)

    def kl(self, inputs: dict, grad: bool = True):
        """(sum over the answer tokens of KL(base || tuned), number of answer tokens) for the batch ``inputs`` of the
        forward just run inside :meth:`watch`. ``grad=False``: measured only, no graph."""
        import torch
        import torch.nn.functional as F

        hidden, self._hidden = self._hidden, None
        if hidden is None:
            raise RuntimeError("Anchor.kl: no forward was seen; run the model inside Anchor.watch() first")
        labels = inputs["labels"]
        mask = labels[:, 1:] != -100
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            # A soft prompt (prompt tuning) prepends virtual tokens: the batch's own positions are the last ones.
            tuned = _next_token_logits(transformers_model(self.model), hidden[:, -labels.shape[1]:], mask)
        with self._base() as base:
            base_hidden = base.base_model(**_backbone_inputs(inputs)).last_hidden_state
            target = _next_token_logits(base, base_hidden, mask)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            total = F.kl_div(tuned.log_softmax(-1), target.log_softmax(-1), log_target=True, reduction="sum")
        return total, mask.sum()

    def l2sp(self, grad: bool = True):
        """||theta - theta_0||^2 over the trainable parameters, in float32."""
        import torch

        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            terms = [(p.float() - p0.to(p.device).float()).pow(2).sum() for p, p0 in self.start]
            return torch.stack(terms).sum() if terms else torch.zeros(())

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


@functools.cache
def _anchored_class():
    from trl import SFTTrainer

    from forgetbench.train.save import sharded

    class AnchoredSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer with :class:`Anchor`'s terms added to the SFT loss while training:
        ``loss = SFT + kl_weight * KL + l2sp_weight * ||theta - theta_0||^2``. The terms are logged unweighted
        (``anchor/kl``: per answer token; ``anchor/l2sp``); a weight of 0 logs a term without training on it.
        Evaluation losses are the SFT loss alone."""

        def __init__(self, *args, kl_weight: float | None = None, l2sp_weight: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            if sharded(self):
                raise RecipeError("--kl_weight/--l2sp_weight: not supported under FSDP or DeepSpeed ZeRO-3 (each "
                                  "rank holds a shard of the weights the anchor compares with)")
            self.kl_weight, self.l2sp_weight = kl_weight, l2sp_weight
            self.anchor = Anchor(self.model, kl=kl_weight is not None, l2sp=l2sp_weight is not None)

        def train(self, *args, **kwargs):
            try:
                return super().train(*args, **kwargs)
            finally:
                self.anchor.close()  # the model that is saved carries no hook of ours

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            # TRL's SFT loss, untouched: with return_outputs=True TRL recomputes the logits under no_grad (they
            # cannot carry the KL's gradient), so the tuned logits come from the hooked backbone output instead.
            if not self.model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with self.anchor.watch():
                result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = result[0] if return_outputs else result
            if self.kl_weight is not None:
                total, count = self.anchor.kl(inputs, grad=self.kl_weight > 0)
                both = self.accelerator.gather_for_metrics(torch.stack([total.detach(), count.to(total)])).view(-1, 2)
                self._metrics["train"]["anchor/kl"].append((both[:, 0].sum() / both[:, 1].sum().clamp(min=1)).item())
                if self.kl_weight > 0:
                    loss = loss + self.kl_weight * self._token_mean(total, count, num_items_in_batch)
            if self.l2sp_weight is not None:
                distance = self.anchor.l2sp(grad=self.l2sp_weight > 0)
                self._metrics["train"]["anchor/l2sp"].append(distance.item())
                if self.l2sp_weight > 0:
                    loss = loss + self.l2sp_weight * self._once_per_step(distance.to(loss.device), num_items_in_batch)
            return (loss, result[1]) if return_outputs else loss

        def _token_mean(self, total, count, num_items_in_batch):
            """``total`` over the answer tokens as TRL normalises the SFT loss: by the whole accumulated batch's
            count (all ranks) when the Trainer gives it, else by this micro-batch's."""
            if num_items_in_batch is None:
                return total / count.clamp(min=1)
            mean = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                mean = mean * (self.accelerator.num_processes // self.get_tp_size())
            return mean

        def _once_per_step(self, term, num_items_in_batch):
            """A per-optimizer-step term added to each micro-batch's loss: divided by the accumulation steps where the
            Trainer does not divide the loss itself (the Trainer's own rule)."""
            scaled = self.loss_is_scaled_for_ga
            if scaled is None:
                scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or bool(
                    self.compute_loss_func)
            return term / self.current_gradient_accumulation_steps if scaled else term

    return AnchoredSFTTrainer


def anchored_trainer(plan: Mitigations):
    """The trainer class for a run with ``--kl_weight``/``--l2sp_weight`` (called like ``SFTTrainer``)."""
    return functools.partial(_anchored_class(), kl_weight=plan.kl_weight, l2sp_weight=plan.l2sp_weight)


# --- WiSE-FT --------------------------------------------------------------------------------------------------------


def wise_folder(alpha: float) -> str:
    """
    >>> wise_folder(0.5), wise_folder(1.0)
    ('wise-0.5', 'wise-1')
    """
    return f"{WISE_PREFIX}{alpha:g}"


def _load(path: str):
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
    except OSError as exc:
        raise MitigationError(f"{path}: cannot load a model ({exc})") from None


def interpolate(base, tuned, alpha: float) -> None:
    """WiSE-FT in place: every floating parameter of ``tuned`` becomes (1 - alpha) * base + alpha * tuned, computed
    in float32 (or wider) and rounded to the parameter's dtype; alpha 0 and 1 give either model exactly."""
    import torch

    ours, theirs = dict(tuned.named_parameters()), dict(base.named_parameters())
    if ours.keys() != theirs.keys() or any(p.shape != theirs[n].shape for n, p in ours.items()):
        raise MitigationError("the tuned and the base model do not have the same parameters (not the same "
                              "architecture?)")
    with torch.no_grad():
        for name, param in ours.items():
            if param.is_floating_point():
                wide = torch.promote_types(param.dtype, torch.float32)
                mixed = (1 - alpha) * theirs[name].to(param.device, wide) + alpha * param.to(wide)
                param.copy_(mixed.to(param.dtype))


def _copy_processor_files(source: Path, target: Path) -> None:
    """A checkpoint's top-level files other than the weights, their config and the manifest: the processor's."""
    for item in source.iterdir():
        if item.is_file() and item.name not in _MODEL_FILES and not item.name.endswith(
                (".safetensors", ".safetensors.index.json", ".bin")):
            shutil.copy2(item, target / item.name)


def wise_ft(base_dir: str | Path, tuned_dir: str | Path, alpha: float, out_dir: str | Path) -> Path:
    """WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): write to ``out_dir`` the
    checkpoint whose every floating parameter is (1 - alpha) * base + alpha * tuned, without retraining.

    ``tuned_dir``: a merged checkpoint (a recipe's ``OUTPUT_DIR``; PEFT runs are interpolated through their merged
    weights, which for LoRA equals merging with the LoRA scaling multiplied by alpha); ``base_dir``: the model it was
    tuned from (a folder, a hub id or ``forgetbench-lab``). The manifest is the tuned one's with ``method``
    ``<method>+wise`` and ``mitigations.wise = {alpha, base, tuned}``. Returns ``out_dir``.
    """
    tuned_dir = Path(tuned_dir)
    if not (isinstance(alpha, int | float) and 0 <= alpha <= 1):
        raise MitigationError(f"alpha {alpha}: must be in [0, 1] (0: the base model, 1: the tuned one)")
    if not tuned_dir.is_dir():
        raise MitigationError(f"{tuned_dir}: no such checkpoint folder")
    manifest = read_manifest(tuned_dir) or {}
    if manifest.get("merged") is False:
        raise MitigationError(f"{tuned_dir}: not merged ({manifest.get('method')}: a soft prompt), so there are no "
                              "tuned weights to interpolate")
    names = [manifest[key] for key in ("base_model", "base_model_path") if manifest.get(key)]
    if names and not any(same_model(name, str(base_dir)) for name in names):
        raise MitigationError(f"{tuned_dir} was tuned from {manifest.get('base_model')}, not from {base_dir}")
    base, tuned = _load(resolve_model(str(base_dir))), _load(str(tuned_dir))
    interpolate(base, tuned, alpha)
    del base
    entry = {"alpha": alpha, "base": str(base_dir), "tuned": str(tuned_dir)}
    out_manifest = {
        "base_model": str(base_dir), "base_model_path": resolve_model(str(base_dir)),
        **manifest,
        "method": f"{manifest['method']}+wise" if manifest.get("method") else "wise",
        "mitigations": {**(manifest.get("mitigations") or {}), "wise": entry},
        "versions": library_versions(),
    }

    def write(staging: Path) -> None:
        tuned.save_pretrained(staging, safe_serialization=True)
        _copy_processor_files(tuned_dir, staging)
        manifest_path(staging).write_bytes(manifest_bytes(out_manifest))

    return write_model_folder(out_dir, write)


def write_wise_checkpoints(out_dir: Path, base_path: str, alphas: Sequence[float]) -> list[Path]:
    """A recipe's WiSE-FT step: ``OUTPUT_DIR/wise-<alpha>/`` per alpha, after removing those of an earlier run in the
    same folder (derived from the weights just replaced)."""
    for stale in Path(out_dir).glob(f"{WISE_PREFIX}*"):
        if stale.is_dir() and ((read_manifest(stale) or {}).get("mitigations") or {}).get("wise"):
            shutil.rmtree(stale)
    return [wise_ft(base_path, out_dir, alpha, Path(out_dir) / wise_folder(alpha)) for alpha in alphas]


# --- PEFT adapter merging -------------------------------------------------------------------------------------------


def _adapter_folder(path: Path) -> Path:
    """A run folder (its ``adapter/``) or an adapter folder itself, checked to be a plain LoRA adapter."""
    folder = path / "adapter" if (path / "adapter" / "adapter_config.json").is_file() else path
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise MitigationError(f"{path}: no PEFT adapter (adapter_config.json) here or in {path / 'adapter'}")
    config = json.loads(config_file.read_text())
    kind = config.get("peft_type")
    if kind != "LORA":
        raise MitigationError(f"{path}: not a LoRA adapter ({kind}); add_weighted_adapter merges LoRA adapters only")
    if config.get("use_dora"):
        raise MitigationError(f"{path}: a DoRA adapter; add_weighted_adapter does not combine DoRA's magnitude vectors")
    if config.get("modules_to_save"):
        raise MitigationError(f"{path}: the adapter also trains {', '.join(config['modules_to_save'])} in full "
                              "(modules_to_save), which add_weighted_adapter cannot combine")
    return folder


def merge_adapters(base: str, adapter_dirs: Sequence[str | Path], weights: Sequence[float], combination_type: str,
                   density: float | None, out_dir: str | Path, seed: int = 0) -> Path:
    """Combine LoRA adapters of one base model with PEFT's ``add_weighted_adapter`` (``ties``: Yadav et al. 2023,
    TIES-Merging; ``dare_linear``/``dare_ties``: Yu et al. 2024, DARE; see :data:`COMBINATIONS`), merge the result
    into the base and write it to ``out_dir`` as a checkpoint (with the base's processor files and a manifest).
    ``density``: the share of values kept, for the pruning combinations (:data:`WITH_DENSITY`); ``seed``: DARE
    prunes at random. ``adapter_dirs``: recipe output folders (their ``adapter/``) or adapter folders."""
    import torch
    from peft import PeftModel

    if len(adapter_dirs) < 2:
        raise MitigationError("--adapters: merging needs at least two adapters")
    if len(weights) != len(adapter_dirs):
        raise MitigationError(f"--weights: {len(weights)} weights for {len(adapter_dirs)} adapters")
    if combination_type not in COMBINATIONS:
        raise MitigationError(f"--combination {combination_type}: not one of {', '.join(COMBINATIONS)}")
    if combination_type in WITH_DENSITY and (density is None or not 0 < density <= 1):
        raise MitigationError(f"--density {density}: {combination_type} needs the share of values to keep, in (0, 1]")
    if combination_type not in WITH_DENSITY and density is not None:
        raise MitigationError(f"--density: only for {', '.join(WITH_DENSITY)}, not {combination_type}")
    base_path = resolve_model(base)
    folders = [_adapter_folder(Path(d)) for d in adapter_dirs]
    for path, folder in zip(adapter_dirs, folders, strict=True):
        trained_on = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if trained_on and not same_model(trained_on, base_path):
            raise MitigationError(f"{path}: an adapter of {trained_on}, not of {base}")
    model = PeftModel.from_pretrained(_load(base_path), str(folders[0]), adapter_name="a0")
    for i, folder in enumerate(folders[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    torch.manual_seed(seed)
    try:
        model.add_weighted_adapter([f"a{i}" for i in range(len(folders))], list(weights), "merged",
                                   combination_type=combination_type, density=density)
    except (ValueError, TypeError) as exc:
        raise MitigationError(f"add_weighted_adapter ({combination_type}): {exc}") from None
    model.set_adapter("merged")
    merged = model.merge_and_unload(adapter_names=["merged"])
    sources = [(read_manifest(d) or {}).get("method") for d in adapter_dirs]
    manifest = {
        "base_model": base, "base_model_path": base_path,
        "method": f"merge-{combination_type}", "method_family": "reparameterization", "merged": True,
        "merge": "LoRA adapters combined by peft add_weighted_adapter, merged in memory",
        "mitigations": {"merge": {"combination_type": combination_type, "weights": list(weights), "density": density,
                                  "seed": seed, "adapters": [str(f) for f in folders], "methods": sources}},
        "versions": library_versions(),
    }

    def write(staging: Path) -> None:
        merged.save_pretrained(staging, safe_serialization=True)
        if Path(base_path).is_dir():
            _copy_processor_files(Path(base_path), staging)
        else:
            from transformers import AutoProcessor

            AutoProcessor.from_pretrained(base_path).save_pretrained(staging)
        manifest_path(staging).write_bytes(manifest_bytes(manifest))

    return write_model_folder(out_dir, write)


# --- command line ---------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m forgetbench.train.mitigations",
                                     description="Post-hoc mitigations of forgetting on finished checkpoints "
                                                 "(docs/mitigations.md).")
    commands = parser.add_subparsers(dest="command", required=True)
    wise = commands.add_parser("wise", help="WiSE-FT: interpolate base and tuned weights")
    wise.add_argument("--base", required=True, help="the model the checkpoint was tuned from")
    wise.add_argument("--tuned", required=True, help="a merged checkpoint (a recipe's output_dir)")
    wise.add_argument("--alphas", required=True, help="comma-separated, each in [0, 1]: 0.25,0.5,0.75")
    wise.add_argument("--out", help="parent folder of the wise-<alpha>/ checkpoints (default: --tuned)")
    merge = commands.add_parser("merge", help="combine LoRA adapters with PEFT's add_weighted_adapter")
    merge.add_argument("--base", required=True, help="the base model every adapter was trained on")
    merge.add_argument("--adapters", required=True, nargs="+", help="recipe output folders or adapter folders")
    merge.add_argument("--weights", required=True, nargs="+", type=float, help="one weight per adapter")
    merge.add_argument("--combination", required=True, choices=COMBINATIONS, metavar="TYPE",
                       help=f"one of {', '.join(COMBINATIONS)}")
    merge.add_argument("--density", type=float, help=f"share of values kept ({', '.join(WITH_DENSITY)})")
    merge.add_argument("--seed", type=int, default=0, help="DARE's random pruning")
    merge.add_argument("--out", required=True, help="the merged checkpoint's folder")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.command == "wise":
            parent = Path(args.out or args.tuned)
            for alpha in parse_alphas(args.alphas, "--alphas"):
                print(wise_ft(args.base, args.tuned, alpha, parent / wise_folder(alpha)))
        else:
            print(merge_adapters(args.base, args.adapters, args.weights, args.combination, args.density, args.out,
                                 args.seed))
    except RecipeError as exc:
        print(f"python -m forgetbench.train.mitigations {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
