"""The recipe configs are generated: the shipped files are the generator's output, and say what the sources say.

That every config parses with TRL's parser is tests/test_recipes.py's job.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import tomllib
import yaml
from conftest import REPO

from forgetbench.train import configs
from forgetbench.train.methods import METHODS

ROOT = REPO / "recipes" / "configs"
SOURCES = configs.load_sources(ROOT)
MODELS = list(SOURCES["models"])
PAIRS = [(model, method) for model in MODELS for method in METHODS]


def _value(entry):
    return entry["value"] if isinstance(entry, dict) else entry


def test_shipped_configs_are_the_generators_output():
    stale = configs.stale(ROOT)
    assert not stale, f"stale recipe configs: {', '.join(stale)}; regenerate with `{configs.REGENERATE}`"


def test_check_names_a_stale_missing_or_unsourced_config(tmp_path, capsys):
    shutil.copytree(ROOT.parent, tmp_path / "recipes", ignore=shutil.ignore_patterns("__pycache__"))
    root = tmp_path / "recipes" / "configs"
    edited = root / "qwen2-vl-2b" / "lora.yaml"
    edited.write_text(edited.read_text().replace("lora_r: 16", "lora_r: 8"))
    (root / "lab" / "full.yaml").unlink()
    (root / "lab" / "mine.yaml").write_text("model_name_or_path: x\n")
    (root.parent / "ia3.py").unlink()  # recipe scripts are generated from the methods table too
    assert configs.main(["--check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert {line for line in err.splitlines() if line.startswith("stale: ")} == {
        "stale: configs/qwen2-vl-2b/lora.yaml", "stale: configs/lab/full.yaml", "stale: configs/lab/mine.yaml",
        "stale: ia3.py"}
    assert configs.REGENERATE in err

    assert configs.main(["--root", str(root)]) == 1  # rewrites the two, and names the file it has no source for
    assert "lab/mine.yaml" in capsys.readouterr().err
    (root / "lab" / "mine.yaml").unlink()
    assert configs.main(["--check", "--root", str(root)]) == 0
    assert edited.read_bytes() == (ROOT / "qwen2-vl-2b" / "lora.yaml").read_bytes()


def test_sources_are_never_taken_for_configs_and_ship_in_the_wheel():
    sources = sorted((ROOT / configs.SOURCES).iterdir())
    assert [p.name for p in sources] == sorted(configs.SOURCE_FILES)
    generated = {ROOT / model / f"{method}.yaml" for model, method in PAIRS}
    assert set(ROOT.rglob("*.yaml")) == set(ROOT.glob("*/*.yaml")) == generated  # test_recipes.py's glob
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path for pattern in patterns["forgetbench.recipes"] for path in (REPO / "recipes").glob(pattern)}
    assert set(sources) | generated <= shipped


def test_generator_imports_neither_torch_nor_transformers():
    code = ("import sys\nfrom forgetbench.train import configs\nconfigs.render('lab', 'lora')\n"
            "print(sorted({'torch', 'transformers', 'trl', 'peft'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("model", "method"), PAIRS, ids=[f"{m}/{n}" for m, n in PAIRS])
def test_config_says_what_the_sources_say(model, method):
    entry, spec = SOURCES["models"][model], METHODS[method]
    text = (ROOT / model / f"{method}.yaml").read_text()
    config = yaml.safe_load(text)
    rates = SOURCES["methods"]["learning_rate"][entry["profile"]]
    table = SOURCES["methods"]["config"]
    own = {key: _value(v) for key, v in table.get(method, table.get(spec.family, {})).items()}  # else its family's
    every_methods_keys = {key for keys in SOURCES["methods"]["config"].values() for key in keys}

    assert config["model_name_or_path"] == _value(entry["config"]["model_name_or_path"])
    assert config["learning_rate"] == rates.get(method, rates.get(spec.family))
    assert isinstance(config["learning_rate"], float)
    assert {key: config[key] for key in every_methods_keys & set(config)} == own
    assert config["output_dir"] == f"runs/{model}-{method.replace('_', '-')}"
    profile = SOURCES["defaults"]["profiles"][entry["profile"]]["config"]
    assert {key: config[key] for key in profile if key not in entry["config"]} == {
        key: _value(v) for key, v in profile.items() if key not in entry["config"]}
    header = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    assert f"{method} ({spec.family}) on {entry['name']}: {spec.description}." in header
    assert configs.REGENERATE in header


def test_each_config_folder_is_picked_by_a_model_type_or_the_lab_alias():
    """The one table the study reads to choose a model's recipe configs; the key never reaches a config."""
    picked = {model: configs.config_folder_for(entry.get("model_type"), alias=entry.get("alias"))
              for model, entry in SOURCES["models"].items()}
    assert picked == {model: model for model in MODELS}
    assert configs.config_folder_for("llava") == "llava-1.5-7b" and configs.config_folder_for("mllama") is None
    for path in ROOT.glob("*/*.yaml"):
        assert not {"model_type", "alias"} & set(yaml.safe_load(path.read_text())), path


def test_sources_with_a_misspelt_name_or_a_string_rate_are_refused():
    misspelt = yaml.safe_load(yaml.safe_dump(SOURCES))
    misspelt["methods"]["config"]["lorra"] = {"lora_r": 8}
    with pytest.raises(ValueError, match="methods.yml config: lorra"):
        configs.check_sources(misspelt)
    shadowed = yaml.safe_load(yaml.safe_dump(SOURCES))
    shadowed["models"]["qwen2.5-vl-3b"]["model_type"] = "qwen2_vl"  # the study would never pick this folder
    with pytest.raises(ValueError, match="models.yml qwen2.5-vl-3b: model_type qwen2_vl is an earlier entry's too"):
        configs.check_sources(shadowed)
    del shadowed["models"]["qwen2.5-vl-3b"]["model_type"]
    with pytest.raises(ValueError, match="models.yml qwen2.5-vl-3b: needs one of model_type or alias"):
        configs.check_sources(shadowed)
    string_rate = yaml.safe_load(yaml.safe_dump(SOURCES))
    string_rate["methods"]["learning_rate"]["gpu"]["ia3"] = "1e-3"  # what YAML 1.1 makes of 1e-3
    with pytest.raises(ValueError, match="write 1.0e-4"):
        configs.render("qwen2-vl-2b", "ia3", string_rate)
