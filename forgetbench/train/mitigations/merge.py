"""Merging LoRA adapters of one base model with PEFT's ``add_weighted_adapter`` (TIES, DARE, ...), on finished
checkpoints only: no recipe flag, so no registry entry (docs/mitigations.md)."""

from __future__ import annotations

import json
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
from forgetbench.train.mitigations.entry import MitigationError

# add_weighted_adapter's combination types, and those that prune to a density first (TIES, DARE, magnitude).
COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
WITH_DENSITY = tuple(c for c in COMBINATIONS if c.startswith(("ties", "dare", "magnitude")))


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
    model = PeftModel.from_pretrained(load(base_path), str(folders[0]), adapter_name="a0")
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
        merged.save_pretrained(staging)  # transformers 5 writes safetensors only (no switch left)
        if Path(base_path).is_dir():
            copy_processor_files(Path(base_path), staging)
        else:
            from transformers import AutoProcessor

            AutoProcessor.from_pretrained(base_path).save_pretrained(staging)
        manifest_path(staging).write_bytes(manifest_bytes(manifest))

    return write_model_folder(out_dir, write)
