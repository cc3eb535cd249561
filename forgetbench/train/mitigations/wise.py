"""WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): checkpoints whose weights interpolate
the base's and the tuned model's, without retraining; ``--wise_alphas a,b`` on a recipe writes one per alpha after
saving, :func:`wise_ft` does it on finished checkpoints (docs/mitigations.md)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from forgetbench.checkpoint import (
    library_versions,
    manifest_bytes,
    manifest_path,
    read_manifest,
    resolve_model,
    same_model,
    write_model_folder,
)
from forgetbench.train.mitigations.checkpoints import copy_processor_files, load
from forgetbench.train.mitigations.entry import Context, Entry, MitigationError, Option

PREFIX = "wise-"


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


def wise_folder(alpha: float) -> str:
    """
    >>> wise_folder(0.5), wise_folder(1.0)
    ('wise-0.5', 'wise-1')
    """
    return f"{PREFIX}{alpha:g}"


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
    base, tuned = load(resolve_model(str(base_dir))), load(str(tuned_dir))
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
        tuned.save_pretrained(staging)  # transformers 5 writes safetensors only (no switch left)
        copy_processor_files(tuned_dir, staging)
        manifest_path(staging).write_bytes(manifest_bytes(out_manifest))

    return write_model_folder(out_dir, write)


def write_wise_checkpoints(out_dir: Path, base_path: str, alphas: Sequence[float]) -> list[Path]:
    """A recipe's WiSE-FT step: ``OUTPUT_DIR/wise-<alpha>/`` per alpha, after removing those of an earlier run in the
    same folder (derived from the weights just replaced)."""
    for stale in Path(out_dir).glob(f"{PREFIX}*"):
        if stale.is_dir() and ((read_manifest(stale) or {}).get("mitigations") or {}).get("wise"):
            shutil.rmtree(stale)
    return [wise_ft(base_path, out_dir, alpha, Path(out_dir) / wise_folder(alpha)) for alpha in alphas]


# --- the registry entry ---------------------------------------------------------------------------------------------


def check(args, context: Context) -> tuple[float, ...] | None:
    if args.wise_alphas is None:
        return None
    if not context.method.mergeable:
        raise MitigationError(f"--wise_alphas: {context.method.name}'s soft prompt is not folded into the weights, so "
                              "there are no tuned weights to interpolate with the base")
    return parse_alphas(args.wise_alphas)


def after_save(alphas: tuple[float, ...] | None, out_dir: Path, base_path: str) -> list[Path]:
    return write_wise_checkpoints(out_dir, base_path, alphas or ())  # off: clears an earlier run's


def manifest(alphas: tuple[float, ...] | None, record, trainer) -> dict:
    return {"wise": None if not alphas else {"alphas": list(alphas), "folders": [wise_folder(a) for a in alphas]}}


def points(mitigations: dict) -> list[str]:
    """The arm's ``wise-<alpha>`` folders; a WiSE-FT checkpoint's own manifest (``{alpha, base, tuned}``) has none."""
    return list((mitigations.get("wise") or {}).get("folders") or [])


MITIGATION = Entry(
    name="wise", order=30, label="WiSE-FT", check=check, after_save=after_save, manifest=manifest, points=points,
    options=(Option("wise_alphas", str | None, "WiSE-FT: alphas a,b in [0, 1]; writes OUTPUT_DIR/wise-<alpha>/ "
                                               "checkpoints"),),
)
