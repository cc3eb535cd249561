"""The anchor to the base model while training: ``--kl_weight W`` (LwF-style KL to the base's next-token
distributions on the answer tokens) and ``--l2sp_weight W`` (L2-SP), added to TRL's SFT loss by the trainer
subclass :func:`anchored_class` builds (docs/mitigations.md)."""

from __future__ import annotations

import copy
import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass

from forgetbench.train.mitigations.entry import Context, Entry, MitigationError, Option


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
def anchored_class(base: type | None = None) -> type:
    """``base`` (TRL's SFTTrainer when None) with :class:`Anchor`'s terms; one class per base."""
    if base is None:
        from trl import SFTTrainer

        base = SFTTrainer
    from forgetbench.train.save import sharded

    class AnchoredSFTTrainer(base):
        """TRL's SFTTrainer with :class:`Anchor`'s terms added to the SFT loss while training:
        ``loss = SFT + kl_weight * KL + l2sp_weight * ||theta - theta_0||^2``. The terms are logged unweighted
        (``anchor/kl``: per answer token; ``anchor/l2sp``); a weight of 0 logs a term without training on it.
        Evaluation losses are the SFT loss alone."""

        def __init__(self, *args, kl_weight: float | None = None, l2sp_weight: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            if sharded(self):
                raise MitigationError("--kl_weight/--l2sp_weight: not supported under FSDP or DeepSpeed ZeRO-3 (each "
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


# --- the registry entry ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    kl: float | None  # None: off; 0: the term is measured and logged, not trained on
    l2sp: float | None


def check(args, context: Context) -> Weights | None:
    for flag, weight in (("--kl_weight", args.kl_weight), ("--l2sp_weight", args.l2sp_weight)):
        if weight is not None and not (math.isfinite(weight) and weight >= 0):
            raise MitigationError(f"{flag} {weight}: must be a finite number >= 0 (0: log the term, do not train "
                                  "on it)")
    if args.kl_weight is None and args.l2sp_weight is None:
        return None
    return Weights(args.kl_weight, args.l2sp_weight)


def trainer(settings: Weights, base: type) -> tuple[type, dict]:
    return anchored_class(base), {"kl_weight": settings.kl, "l2sp_weight": settings.l2sp}


def manifest(settings: Weights | None, record, trainer) -> dict:
    """``kl`` and ``l2sp``: the weight and the unweighted term at each log, as ``losses`` records the loss."""
    history = trainer.state.log_history if trainer is not None else []
    anchor = getattr(trainer, "anchor", None)

    def term(weight, key: str, **extra):
        logged = [[log["step"], log[key]] for log in history if key in log]
        return None if weight is None else {"weight": weight, **extra, "logged": logged}

    kl, l2sp = (None, None) if settings is None else (settings.kl, settings.l2sp)
    return {"kl": term(kl, "anchor/kl", base=anchor.base_kind if anchor else None),
            "l2sp": term(l2sp, "anchor/l2sp")}


MITIGATION = Entry(
    name="anchor", order=20, check=check, trainer=trainer, manifest=manifest,
    options=(
        Option("kl_weight", float | None, "anchor: weight of KL(base || tuned) on the answer tokens (LwF); 0 logs it"),
        Option("l2sp_weight", float | None, "anchor: weight of ||theta - theta_0||^2 over trainable parameters "
                                            "(L2-SP)"),
    ),
)
