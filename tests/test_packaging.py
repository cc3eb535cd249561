"""pip install of forgetbench into an existing lmms-eval stack, and how its tasks reach lmms-eval."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_command

from forgetbench import tasks_path


def test_install_changes_no_installed_package(tmp_path):
    """In an environment holding lmms-eval, transformers, peft, trl and accelerate, pip would add only us."""
    report = tmp_path / "report.json"
    run_command(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-build-isolation",
         "--report", str(report), str(REPO)]
    )
    would_install = {item["metadata"]["name"] for item in json.loads(report.read_text())["install"]}
    assert would_install == {"forgetbench"}


def test_dependencies_declare_the_stack_and_do_not_pin_torch():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]}
    assert {"lmms-eval", "transformers", "peft", "trl", "accelerate", "datasets"} <= names
    assert "bitsandbytes" in project["optional-dependencies"]["qlora"]
    assert [dep for dep in project["dependencies"] if dep.startswith("torch")] == ["torch"]


def test_wheel_ships_tasks_data_recipes_model_and_entry_point(tmp_path):
    run_command([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                 "-w", str(tmp_path), str(REPO)])
    (wheel,) = tmp_path.glob("forgetbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "forgetbench/tasks/lab/_default_template_yaml",
        "forgetbench/tasks/lab/forgetbench_lab_digits.yaml",
        "forgetbench/tasks/lab/data/digits_test.parquet",
        "forgetbench/recipes/lora.py",
        "forgetbench/recipes/configs/lab/lora.yaml",
        "forgetbench/lab/base_model/model.safetensors",
        "forgetbench/lab/base_model/tokenizer.json",
    ]:
        assert expected in names, expected
    # Found, not listed (setup.py): every module, task file and recipe file of the tree is in the wheel.
    tree = {f"forgetbench/{p.relative_to(REPO / 'forgetbench').as_posix()}"
            for p in (REPO / "forgetbench").rglob("*.py")}
    for top in ("tasks", "recipes"):
        tree |= {f"forgetbench/{p.relative_to(REPO).as_posix()}" for p in (REPO / top).rglob("*")
                 if p.is_file() and p.suffix in (".py", ".yaml", ".yml", ".parquet") or p.name.endswith("_yaml")}
    assert tree - names == set()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[lmms_eval.models]" in text and "forgetbench.evaluate.plugin:lmms_eval_entry_point" in text


LAB_NAMES = {
    "forgetbench_lab_color", "forgetbench_lab_shape", "forgetbench_lab_count", "forgetbench_lab_digits",
    "forgetbench_lab_upstream", "forgetbench_lab_downstream",
}


def test_every_task_yaml_loads_through_the_task_manager():
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_path()), include_defaults=False)
    assert LAB_NAMES <= set(manager.all_tasks)
    loaded = manager.load_task_or_group(["forgetbench_lab_color", "forgetbench_lab_digits"])
    assert len(loaded) == 2


@pytest.mark.heavy
def test_plugin_entry_point_makes_the_stock_task_manager_find_our_tasks():
    """What happens inside a plain `lmms-eval` run: importing lmms_eval.models loads our entry point."""
    code = (
        "import lmms_eval.models\n"
        "from lmms_eval.tasks import TaskManager\n"
        "print(sorted(t for t in TaskManager(include_defaults=False).all_tasks if t.startswith('forgetbench_')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(eval(out.strip().splitlines()[-1])) >= LAB_NAMES


def test_tasks_path_command_prints_the_include_path():
    out = run_command([str(Path(sys.executable).parent / "forgetbench"), "tasks-path"]).stdout.strip()
    assert Path(out) == tasks_path()
    assert (Path(out) / "lab" / "forgetbench_lab_color.yaml").is_file()


def test_task_yamls_declare_primary_metric_and_scale():
    template = (tasks_path() / "lab" / "_default_template_yaml").read_text()
    declared = yaml.safe_load(template.replace("!function", ""))["metadata"]["forgetbench"]
    assert declared == {"primary_metric": "exact_match", "scale": "fraction"}
