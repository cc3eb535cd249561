"""Every method x architecture: the exact set of trainable parameter names, and that two optimizer steps change
exactly those parameters and nothing else.

Which methods there are comes from the table, forgetbench.train.methods.METHODS, and which architectures from the
tiny builders (forgetbench.lab.tiny); what each trains does not: the expected names are written from literal module
paths (read off models instantiated with transformers 5: tiny.PARTS), not computed by forgetbench.train.methods /
forgetbench.train.architectures, the code under test.
"""

from __future__ import annotations

import re
import types

import pytest
import torch

from forgetbench.lab import tiny
from forgetbench.train.methods import METHODS, MethodError, get_method, prepare
from forgetbench.train.recipe import parts_trained


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second thread only adds contention on a shared 2-core machine (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# Every tiny architecture but the real-size ones, with its parts written out by hand next to its builder.
SPEC = tiny.PARTS
LLM_LINEAR = r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
IA3_LINEAR = r"model\.language_model\.layers\.\d+\.(self_attn\.[kv]_proj|mlp\.down_proj)"
LLM_NORMS = r"model\.language_model\.(layers\.\d+\.(input|post_attention)_layernorm|norm)"
ADAPTER_SUFFIXES = {
    "lora": (LLM_LINEAR, ("lora_A.default.weight", "lora_B.default.weight")),
    "qlora": (LLM_LINEAR, ("lora_A.default.weight", "lora_B.default.weight")),
    "dora": (LLM_LINEAR, ("lora_A.default.weight", "lora_B.default.weight", "lora_magnitude_vector.default.weight")),
    "ia3": (IA3_LINEAR, ("ia3_l.default",)),
    "ln_tuning": (LLM_NORMS, ("ln_tuning_layers.default.weight",)),
}


def expected_trainable(arch: str, method: str, base_names: list[str], projector=False, vision=False) -> set[str]:
    spec = SPEC[arch]
    last = spec["layers"] - 1
    layer = r"model\.language_model\.layers\.{}"
    own = {
        "full_st": [layer.format(r"\d+")],
        "top_layers": [layer.format(last - 1), layer.format(last)],  # --top_k 2
        "last_layer": [layer.format(last)],
        "projector": list(spec["projector"]),
        "full": [r"model\.language_model", r"lm_head", *spec["projector"], *spec["extra"]],
    }.get(method, [])
    full = own + (list(spec["projector"]) if projector and method not in ("projector", "full") else [])
    full += list(spec["vision"]) if vision else []
    in_full = [n for n in base_names if any(re.match(p + r"(\.|$)", n) for p in full)]
    if method not in ADAPTER_SUFFIXES and method != "prompt_tuning":
        return set(in_full)
    # PEFT: the base model sits under base_model.model (tuners) or base_model (prompt learning); fully tuned
    # modules become modules_to_save copies, the originals frozen.
    prefix = "base_model." if method == "prompt_tuning" else "base_model.model."
    names = set()
    for name in in_full:
        module = next(m.group(0) for p in full if (m := re.match(p + r"(?=\.)", name)))
        names.add(prefix + module + ".modules_to_save.default" + name[len(module):])
    if method == "prompt_tuning":
        return names | {"prompt_encoder.default.embedding.weight"}
    pattern, suffixes = ADAPTER_SUFFIXES[method]
    modules = {n.rsplit(".", 1)[0] for n in base_names if re.fullmatch(pattern + r"\.weight", n)}
    return names | {f"{prefix}{m}.{s}" for m in modules for s in suffixes}


def expected_unused(arch: str, names: set[str]) -> set[str]:
    unused = SPEC[arch]["unused_vision"]
    return {n for n in names if unused and re.search(unused, n.replace(".modules_to_save.default", ""))}


def test_every_tiny_architecture_has_its_parts_written_out():
    """A new family's tiny builder without its parts would be left out of every case below."""
    assert set(SPEC) == set(tiny.BUILDERS) - {"llava_onevision_0.5b"}  # the one real-size build (GPU benchmark)


OPTIONS = dict(tune_projector=False, tune_vision_tower=False, top_k=2, num_virtual_tokens=4)
CASES = [(arch, method, False, False) for arch in SPEC for method in METHODS]
# The projector and the vision tower added to every method on the architecture whose projector sits inside its
# vision module (Qwen2-VL's visual.merger), and to one method of each family elsewhere.
CASES += [("qwen2-vl", method, True, False) for method in METHODS if method not in ("projector", "full")]
CASES += [(arch, method, False, True) for arch in ("qwen2-vl", "llava-1.5", "llava-onevision")
          for method in ("lora", "full_st", "prompt_tuning")]
CASES += [(arch, method, True, False) for arch in ("lab", "llava-onevision", "qwen2.5-vl")
          for method in ("dora", "top_layers", "ia3", "ln_tuning")]


def model_for(arch: str, method: str, tmp_path):
    """The tiny model; for QLoRA saved and loaded back in 4-bit through the recipe's own loader."""
    model = tiny.build(arch)
    if not METHODS[method].quantize_4bit:
        return model
    from trl import ModelConfig

    from forgetbench.train.recipe import load_model

    model.save_pretrained(tmp_path / arch)
    args = types.SimpleNamespace(bf16=False, fp16=False)
    return load_model(str(tmp_path / arch), METHODS[method], ModelConfig(), args)[0]


def weight_values(param) -> torch.Tensor:
    """The values a parameter stands for: a 4-bit weight dequantized, anything else as is. Packed storage is not
    compared: in eval mode, bitsandbytes' AVX512-BF16 CPU path repacks it in place on the first forward (and rounds
    its scales to bf16); training runs in train mode, where no CPU path repacks."""
    import bitsandbytes as bnb

    if isinstance(param, bnb.nn.Params4bit):
        assert not getattr(param.quant_state, "packing_format_for_cpu", False), "repacked for CPU inference"
        return bnb.functional.dequantize_4bit(param.data, param.quant_state).detach().clone()
    return param.detach().clone()


def tuned(arch: str, method: str, tmp_path, projector=False, vision=False):
    from peft import get_peft_model
    from trl import ModelConfig

    model = model_for(arch, method, tmp_path)
    base_names = [n for n, _ in model.named_parameters()]
    options = types.SimpleNamespace(**{**OPTIONS, "tune_projector": projector, "tune_vision_tower": vision})
    peft_config = prepare(model, get_method(method), ModelConfig(lora_r=2, lora_alpha=4), options)
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
    return model, base_names


@pytest.mark.parametrize(("arch", "method", "projector", "vision"), CASES,
                         ids=[f"{a}-{m}" + ("+projector" if p else "") + ("+vision" if v else "")
                              for a, m, p, v in CASES])
def test_trainable_set_and_two_steps_move_exactly_it(arch, method, projector, vision, tmp_path):
    model, base_names = tuned(arch, method, tmp_path, projector, vision)
    expected = expected_trainable(arch, method, base_names, projector, vision)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert sum(parts_trained(model).values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)

    model.train()  # as the Trainer does
    before = {n: weight_values(p) for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for step in range(2):  # LoRA's B starts at zero, so A's gradient is zero on step one; it moves on step two
        model(**tiny.batch(model, seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(weight_values(p), before[n])}
    assert changed == expected - expected_unused(arch, expected)


@pytest.mark.parametrize("arch", ["lab", "qwen2-vl"])
def test_qlora_quantizes_only_the_llm_decoder_layers(arch, tmp_path):
    import bitsandbytes as bnb

    model = model_for(arch, "qlora", tmp_path)
    quantized = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    linear = {n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if re.fullmatch(LLM_LINEAR + r"\.weight", n)}
    assert quantized == linear and linear
    weight = model.get_submodule(next(iter(linear))).weight
    assert isinstance(weight, bnb.nn.Params4bit) and weight.quant_type == "nf4" and weight.dtype == torch.uint8


def test_parts_trained_reports_the_merger_as_qwen_projector():
    model, _ = tuned("qwen2-vl", "last_layer", None, projector=True)
    counts = parts_trained(model)
    merger = sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.visual.merger."))
    assert counts["projector"] == merger and set(counts) == {"projector", "decoder_layers"}


def test_bad_options_name_the_input():
    with pytest.raises(MethodError, match=r"--top_k 9: must be between 1 and the model's 3 decoder layers"):
        prepare(tiny.build("llava-1.5"), get_method("top_layers"), None,
                types.SimpleNamespace(**{**OPTIONS, "top_k": 9}))
    with pytest.raises(MethodError, match="unknown tuning method 'loraa'"):
        get_method("loraa")
