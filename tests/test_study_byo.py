"""Bring your own (issue 20's done-criterion, issue 21 item 5): your data (forgetbench task add) as the task a study
trains on and measures, and every family's tiny model through a whole study (an adapter tuned outside forgetbench
with plain PEFT goes through --checkpoint in tests/test_study.py). The report says, next to each arm, what the study
knows of it: tuned elsewhere, what it trained on when that is not the downstream task's train split, and replay of
an evaluated task's train split (F is flattered)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from forgetbench import study
from forgetbench.checkpoint import manifest_path

REPO = Path(__file__).resolve().parents[1]
SKIP = pytest.mark.skipif(os.environ.get("FORGETBENCH_SKIP_STUDY") == "1", reason="FORGETBENCH_SKIP_STUDY=1")


class _Text(HTMLParser):
    """The page's visible text, one string per headline arm block (``<div class="arm">``) and all of it."""

    def __init__(self):
        super().__init__()
        self.depth, self.arms, self.text, self.skip = 0, [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        if tag == "div":
            if self.depth or ("class", "arm") in attrs:
                if not self.depth:
                    self.arms.append("")
                self.depth += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip -= 1
        if tag == "div" and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.skip:
            return
        self.text.append(data)
        if self.depth:
            self.arms[-1] += data


def _page(html: str) -> tuple[dict[str, str], str]:
    parser = _Text()
    parser.feed(html)
    arms = {" ".join(block.split()).split(" ", 1)[0]: " ".join(block.split()) for block in parser.arms}
    return arms, " ".join(" ".join(parser.text).split())


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "GIT_CEILING_DIRECTORIES": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _study(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "forgetbench.cli", "study", *argv], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


# -- the report's words next to each arm (no training) ------------------------------------------------------------

def test_the_report_says_tuned_elsewhere_own_training_data_and_replay_that_flatters_f(tmp_path):
    from forgetbench.study.report import write_report

    down, up = "forgetbench_lab_digits", "forgetbench_lab_color"
    elsewhere = {"kind": "adapter", "adapter_type": "LORA", "base": "/models/<b>base</b>", "files": []}
    arms = (study.Arm("lora", "lora", "c.yaml", (), down, f"{down}: the downstream task's train split"),
            study.Arm("own", "lora", "c.yaml", (), "my_data", "my_data: the arm's own train_dataset (study YAML), "
                      "not the downstream task"),
            study.Arm("replay", "full_st", "c.yaml", (), down, f"{down}: the downstream task's train split"),
            study.Arm("ext", None, None, (), None, "tuned elsewhere", str(tmp_path / "ext"), True, elsewhere))
    plan = study.Plan("forgetbench-lab", (down,), (up,), arms, limit=2)
    manifest = manifest_path(tmp_path / "arms" / "replay")
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"method": "full_st", "mitigations": {"replay": {
        "tasks": [up], "ratio": 0.2, "evaluated_tasks_replayed": [up]}}}))
    task = {"role": "upstream", "pre": 50.0, "post": 40.0, "delta": -10.0, "delta_ci": None,
            "flips": {"forgotten": 1, "learned": 0}, "mcnemar": {"pvalue": 0.5}}
    method = {"E": 1.0, "F": -10.0, "O": -9.0, "E_ci": None, "F_ci": None, "tasks": {up: task}}
    names = ["lora", "own", "replay", "replay@wise-0.5", "ext"]
    comparison = SimpleNamespace(report={"methods": {name: method for name in names},
                                         "bootstrap": {"confidence": 0.95, "resamples": 10}},
                                 forgotten=[], learned=[])
    html = write_report(tmp_path, plan, {"steps": {}}, comparison, names).read_text()
    headline, text = _page(html)
    assert set(headline) == set(names)
    assert "tuned elsewhere: a PEFT adapter (LORA) over /models/<b>base</b>" in headline["ext"]
    assert "&lt;b&gt;base&lt;/b&gt;" in html and "<b>base</b>" not in html  # escaped
    for name in ("lora", "own", "replay", "replay@wise-0.5"):
        assert "tuned elsewhere" not in headline[name]
    assert "trained on my_data: the arm's own train_dataset (study YAML), not the downstream task" in headline["own"]
    flattered = f"replays the train split of {up}, which also measures F: F is flattered"
    assert flattered in headline["replay"] and flattered in headline["replay@wise-0.5"]
    assert "replays" not in headline["lora"] and "trained on" not in headline["lora"]
    # provenance: the checkpoint arm (no arms/ext folder, no manifest) in words, not as an empty recipe row
    assert "arm ext tuned elsewhere: a PEFT adapter (LORA)" in text
    assert "arm own: trains on my_data" in text


# -- your data, your adapter, one study -----------------------------------------------------------------------------

def _user_task(tmp_path: Path) -> Path:
    """60 rows in LLaVA JSONL (48 train, 12 test), images drawn here: which colour is the square."""
    from PIL import Image

    from forgetbench.suite import user_tasks

    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    images = tmp_path / "data"
    images.mkdir()
    rows = []
    for i in range(60):
        name = list(colours)[i % 3]
        image = Image.new("RGB", (32, 32), (255, 255, 255))
        image.paste(colours[name], (4 + i % 8, 4 + i % 5, 20 + i % 8, 20 + i % 5))
        image.save(images / f"{i}.png")
        rows.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square? Answer in one word."},
            {"from": "gpt", "value": name}]})
    for split, part in (("train", rows[:48]), ("test", rows[48:])):
        (images / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    tasks = tmp_path / "tasks"
    user_tasks.add_task("my_squares", images / "train.jsonl", images / "test.jsonl", tasks)
    return tasks


@SKIP
def test_your_data_is_what_the_study_trains_on_and_measures(tmp_path):
    tasks = _user_task(tmp_path)
    out = tmp_path / "out"
    _study(tmp_path, "--model", "forgetbench-lab", "--tasks-dir", str(tasks), "--downstream", "my_squares",
           "--upstream", "forgetbench_lab_color", "--methods", "lora", "--limit", "8", "--recipe-args",
           "--max_steps 3", "--out", str(out), "--cache-dir", str(tmp_path / "c"))
    tasks_measured = json.loads((out / "compare.json").read_text())["tasks"]  # one arm: compare's own report
    assert {task: (row["role"], row["n"]) for task, row in tasks_measured.items()} == {
        "my_squares": ("downstream", 8), "forgetbench_lab_color": ("upstream", 8)}
    state = json.loads((out / "study.json").read_text())
    command = state["steps"]["train/lora"]["command"]
    assert command[command.index("--dataset_name") + 1] == "my_squares"
    assert command[command.index("--tasks_dir") + 1] == str(tasks.resolve())
    manifest = json.loads((out / "arms" / "lora" / "forgetbench_manifest.json").read_text())
    assert manifest["data"]["dataset"] == "my_squares"
    headline, text = _page((out / "report.html").read_text())
    assert "tuned elsewhere" not in headline["lora"]
    assert "arm lora: trains on my_squares: the downstream task's train split" in text


# -- every family's tiny model, one whole study each ----------------------------------------------------------------

FAMILIES = {"llava-1.5": "llava-1.5-7b", "llava-onevision": "llava-onevision-0.5b", "qwen2-vl": "qwen2-vl-2b",
            "qwen2.5-vl": "qwen2.5-vl-3b"}  # family -> its recipe configs' folder (chosen from model_type)


def _family_study(tmp_path: Path, family: str) -> None:
    model = tmp_path / "model"
    done = subprocess.run([sys.executable, "-m", "forgetbench.cli", "lab", "tiny", "--family", family, "--out",
                           str(model)], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    _study(tmp_path, "--model", str(model), "--downstream", "forgetbench_lab_digits", "--upstream",
           "forgetbench_lab_color,forgetbench_lab_count", "--methods", "lora,full_st", "--limit", "8",
           "--recipe-args", "--max_steps 3", "--out", str(out), "--cache-dir", str(tmp_path / "c"))
    assert (out / "report.html").is_file()
    methods = json.loads((out / "compare.json").read_text())["methods"]
    for arm in ("lora", "full_st"):
        assert {t: r["n"] for t, r in methods[arm]["tasks"].items()} == {
            "forgetbench_lab_digits": 8, "forgetbench_lab_color": 8, "forgetbench_lab_count": 8}
    arms = json.loads((out / "study.json").read_text())["signature"]["arms"]
    folder = REPO / "recipes" / "configs" / FAMILIES[family]
    for arm in arms:
        assert Path(arm["config"]).parent == folder.resolve(), arm["config"]


# qwen2-vl alone took 161 s on 2 shared CPU cores (over the default suite's 90 s): every family is slow-only.
@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_familys_tiny_model_through_a_whole_study(tmp_path, family):
    _family_study(tmp_path, family)
