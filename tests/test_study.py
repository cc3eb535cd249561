"""The study: its outputs, checkpoints tuned elsewhere (a plain-PEFT adapter, a full checkpoint), the cached
baseline, resume after SIGKILL, WiSE-FT points of an arm, and the report rendered in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import REPO, lab_study_command, perturbed_copy, plain_peft_adapter, run_command, train_here


def _study(lab_study, out, *extra: str) -> list[str]:
    """A study with the shared lab study's settings (and so its cached baseline)."""
    return lab_study_command(out, lab_study.cache, *extra)


def _efo(out) -> dict:
    """E, F, O per method of a study's compare.json (one arm: compare's own report; several: under "methods")."""
    report = json.loads((out / "compare.json").read_text())
    methods = report["methods"] if "methods" in report else {report["name"]: report}
    return {name: (m["E"], m["F"], m["O"]) for name, m in methods.items()}


def test_a_study_writes_every_output(lab_study):
    out, stdout = lab_study.out, lab_study.stdout
    from forgetbench.compare.report import SCHEMA

    report = json.loads((out / "compare.json").read_text())
    assert report["schema"] == SCHEMA and list(_efo(out)) == ["lora"]  # one arm: compare's own report
    for name in ("compare.md", "compare.csv", "forgotten.csv", "ef.png", "report.html", "summary.txt"):
        assert (out / name).is_file(), name
    state = json.loads((out / "study.json").read_text())
    assert list(state["steps"]) == ["baseline", "train/lora", "eval/lora", "compare", "report"]
    manifest = json.loads((out / "arms" / "lora" / "forgetbench_manifest.json").read_text())
    assert manifest["method"] == "lora" and manifest["steps"] == 6
    config = json.loads(next((out / "eval" / "lora").glob("*/*_results.json")).read_text())["config"]
    assert config["model"] == "forgetbench" and config["limit"] == 24  # batched, forgetbench's own wrapper
    assert "reusing the cached evaluation" not in stdout
    # Throughput per evaluation: 5 tasks x 24 documents, timed around the whole lmms-eval process
    evaluations = ("baseline", "eval/lora")
    for step in evaluations:
        speed = state["steps"][step]["throughput"]
        assert speed["backend"] == "forgetbench" and speed["samples"] == 120, step
        assert set(speed["by_task"].values()) == {24} and len(speed["by_task"]) == 5, step
        assert speed["wall_seconds"] == pytest.approx(state["steps"][step]["seconds"], abs=1e-3), step
        assert speed["samples_per_second"] == pytest.approx(120 / speed["wall_seconds"], rel=1e-3), step
        # lmms-eval's own clock starts after its imports and task index, so it is the shorter of the two
        assert 0 < speed["lmms_eval_seconds"] < speed["wall_seconds"], step
    html = (out / "report.html").read_text()
    assert "Evaluation throughput" in html and "clock around the whole lmms-eval process" in html
    for step in evaluations:  # each evaluation's row, with its samples/s
        speed = state["steps"][step]["throughput"]
        assert f"<td>{speed['samples']}</td>" in html and f"<td>{speed['samples_per_second']:.2f}</td>" in html
    assert "samples/s (whole lmms-eval process): baseline 120 in" in (out / "summary.txt").read_text()
    csv_methods = {line.split(",")[0] for line in (out / "compare.csv").read_text().splitlines()[1:]}
    assert csv_methods == {"lora"}
    (trained,) = state["signature"]["arms"]
    assert trained["train_dataset"] == "forgetbench_lab_digits"  # the lab's downstream task, not an example set
    command = state["steps"]["train/lora"]["command"]
    assert command[command.index("--dataset_name") + 1] == "forgetbench_lab_digits"


@pytest.fixture(scope="module")
def elsewhere(lab_study, tmp_path_factory) -> Path:
    """A study of two checkpoints tuned elsewhere, nothing to train: a LoRA adapter made with plain PEFT and a full
    checkpoint (the base plus noise), with the shared study's settings (its baseline comes from the cache)."""
    root = tmp_path_factory.mktemp("elsewhere")
    adapter, merged = plain_peft_adapter(root / "adapter"), perturbed_copy(root / "merged", 0.3)
    run_command(_study(lab_study, root / "study", "--checkpoint", f"peft={adapter}", "--checkpoint",
                       f"merged={merged}"), cwd=root)
    return root / "study"


def test_checkpoints_tuned_elsewhere_are_evaluated_not_trained_and_said_so(elsewhere):
    state = json.loads((elsewhere / "study.json").read_text())
    assert list(state["steps"]) == ["baseline", "eval/peft", "eval/merged", "compare", "report"]
    assert state["steps"]["baseline"]["cached"]  # the shared study's baseline
    for arm in ("peft", "merged"):
        assert state["steps"][f"eval/{arm}"]["tuned_elsewhere"] is True
    assert not (elsewhere / "arms").exists()  # nothing trained, nothing copied
    methods = json.loads((elsewhere / "compare.json").read_text())["methods"]
    assert list(methods) == ["peft", "merged"]
    for arm in methods:
        assert {task: row["n"] for task, row in methods[arm]["tasks"].items()} == dict.fromkeys(
            ["forgetbench_lab_digits", "forgetbench_lab_color", "forgetbench_lab_shape", "forgetbench_lab_count",
             "forgetbench_lab_printed"], 24)
    html = (elsewhere / "report.html").read_text()
    assert "tuned elsewhere: a PEFT adapter (LORA) over " in html
    assert "tuned elsewhere: a merged model (LlavaForConditionalGeneration)" in html


class Resumed(NamedTuple):
    out: Path
    done_when_killed: list[str]  # the steps study.json held when the study was killed
    killed_stdout: str
    rerun_stdout: str


@pytest.fixture(scope="module")
def resumed(lab_study, tmp_path_factory) -> Resumed:
    """The shared study again, SIGKILLed (its whole process group, as Ctrl-C, scancel or a closed terminal would)
    while it evaluates the trained arm, then run again."""
    root = tmp_path_factory.mktemp("resumed")
    out, state = root / "study", root / "study" / "study.json"
    command = _study(lab_study, out, "--methods", "lora")
    with open(root / "killed.out", "w") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT, cwd=root,
                                   start_new_session=True)
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:  # kill it once the arm is trained
            if state.is_file() and "train/lora" in json.loads(state.read_text())["steps"]:
                break
            time.sleep(0.2)
        time.sleep(2)  # into eval/lora: an lmms-eval run takes several seconds to import and index its tasks
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the study ended before it could be killed"
    done = list(json.loads(state.read_text())["steps"])
    rerun = run_command(command, cwd=root)
    return Resumed(out, done, (root / "killed.out").read_text(), rerun.stdout)


def test_a_study_killed_while_it_evaluates_and_rerun_ends_with_the_same_numbers(lab_study, resumed):
    """The rerun keeps the trained arm, evaluates it again from scratch and ends with the shared study's numbers."""
    assert resumed.done_when_killed == ["baseline", "train/lora"]
    assert "[train/lora] already done" in resumed.rerun_stdout
    assert not list(resumed.out.glob("eval/.*partial*"))  # the killed evaluation's partial output is gone
    assert _efo(resumed.out) == pytest.approx(_efo(lab_study.out))


def test_a_second_study_reuses_the_cached_baseline_and_says_so(lab_study, resumed):
    entries = [p for p in lab_study.cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    assert f"[baseline] reusing the cached evaluation of the base model: {entries[0]}" in resumed.killed_stdout
    baseline = json.loads((resumed.out / "study.json").read_text())["steps"]["baseline"]
    assert baseline["cached"] == str(entries[0])
    # nothing was evaluated now: the throughput is the first study's, marked as coming from the cache
    first = json.loads((lab_study.out / "study.json").read_text())["steps"]["baseline"]["throughput"]
    assert baseline["throughput"] == {**first, "from_cache": True}


def test_wise_ft_alphas_become_points_of_the_frontier_without_retraining(tmp_path):
    """What the study evaluates after an arm trained with --wise_alphas: the arm, then each alpha's interpolated
    checkpoint as <arm>@wise-<alpha>, none of them trained again (the recipe runs here, in-process; the whole
    study with WiSE-FT points: tests/test_end_to_end.py's slow full lab study, and `make study`)."""
    from forgetbench.study import steps

    plan = _plan("--methods", "lora", "--recipe-args", "--max_steps 1 --wise_alphas 0.5", "--out", str(tmp_path))
    (arm,) = plan.arms
    folder = tmp_path / "arms" / "lora"
    train_here("lora", ["--config", arm.config, *arm.args, "--output_dir", str(folder), "--lora_r", "2"])
    assert steps.points_of(arm, tmp_path) == [("lora", folder), ("lora@wise-0.5", folder / "wise-0.5")]
    manifest = json.loads((folder / "wise-0.5" / "forgetbench_manifest.json").read_text())
    assert manifest["base_model"] == "forgetbench-lab" and manifest["mitigations"]["wise"]["alpha"] == 0.5


def test_a_prompt_tuning_arm_is_refused_up_front(tmp_path):
    out = tmp_path / "study"
    completed = subprocess.run([sys.executable, "-m", "forgetbench.cli", "study", "--out", str(out), "--methods",
                                "lora,prompt_tuning"], capture_output=True, text=True, check=False)
    assert completed.returncode == 2 and not out.exists()
    assert completed.stderr.strip().splitlines() == [
        "forgetbench study: error: arm 'prompt_tuning': prompt tuning cannot be evaluated faithfully: "
        "--model forgetbench merges adapters and a soft prompt cannot be merged (it would be evaluated as the base "
        "model)"]


def test_a_study_yaml_names_arms_with_their_own_overrides(tmp_path):
    from forgetbench.study import plan_from_args

    config = tmp_path / "study.yaml"
    config.write_text("model: forgetbench-lab\nlimit: 8\narms:\n  lora: {recipe: lora}\n"
                      "  full_st+lowlr: {recipe: full_st, args: --learning_rate 1e-4}\n")
    import argparse

    from forgetbench.study import configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    plan = plan_from_args(parser.parse_args(["--config", str(config), "--recipe-args", "--max_steps 3"]))
    train_on = ("--dataset_name", "forgetbench_lab_digits")  # every arm trains on the downstream task
    assert [(a.name, a.recipe, a.args) for a in plan.arms] == [
        ("lora", "lora", (*train_on, "--max_steps", "3")),
        ("full_st+lowlr", "full_st", (*train_on, "--learning_rate", "1e-4", "--max_steps", "3"))]
    assert plan.limit == 8 and plan.arms[1].config == str(REPO / "recipes" / "configs" / "lab" / "full_st.yaml")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PDFTOTEXT = shutil.which("pdftotext")


@pytest.mark.skipif(not (CHROMIUM and PDFTOTEXT), reason="needs Debian's chromium and poppler-utils (make test "
                                                          "installs them where it can: see Makefile)")
def test_the_report_renders_every_arm_in_a_real_browser(lab_study, tmp_path):
    out = lab_study.out
    pdf = tmp_path / "report.pdf"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([CHROMIUM, *flags, "--no-pdf-header-footer", f"--print-to-pdf={pdf}",
                    (out / "report.html").as_uri()], capture_output=True, timeout=120, check=True,
                   env={**os.environ, "HOME": str(tmp_path)})
    text = subprocess.run([PDFTOTEXT, "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    for arm in ("lora",):
        assert f"{arm} gained" in text or f"{arm} lost" in text, arm  # the headline's verdict, as rendered
    for heading in ("Headline", "E versus F", "Per task", "Answer kinds", "Samples that flipped", "Provenance"):
        assert heading in text, heading
    # The page opens with the arm to pick and the rule that picked it (issue 22), before any table or plot.
    assert "Recommendation" in text and "Rule: among the arms whose F is not significantly below" in " ".join(
        text.split())
    assert text.index("Recommendation") < min(text.index("E versus F"), text.index("Per task"))


def test_the_default_study_runs_the_arms_that_tell_the_story():
    import argparse

    from forgetbench.study import configure_parser, plan_from_args

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    plan = plan_from_args(parser.parse_args([]))
    assert [(a.name, a.recipe) for a in plan.arms] == [("lora", "lora"), ("full_st", "full_st"),
                                                       ("top_layers", "top_layers"), ("full_st+replay", "full_st")]
    assert "--wise_alphas" in plan.arms[1].args and "--replay_ratio" in plan.arms[3].args
    assert plan.model == "forgetbench-lab" and plan.limit is None


# -- evaluation backends and throughput ---------------------------------------------------------------------------


def _plan(*argv: str):
    import argparse

    from forgetbench.study import configure_parser, plan_from_args

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return plan_from_args(parser.parse_args(list(argv)))


def _vllm_importable() -> bool:
    from forgetbench.evaluate import vllm_missing

    return vllm_missing() is None


@pytest.mark.skipif(_vllm_importable(), reason="vllm is installed here: the refusal is for machines without it")
def test_the_vllm_backend_without_vllm_is_refused_up_front(tmp_path):
    out = tmp_path / "study"
    completed = subprocess.run([sys.executable, "-m", "forgetbench.cli", "study", "--out", str(out),
                                "--eval-backend", "vllm"], capture_output=True, text=True, check=False)
    assert completed.returncode == 2 and not out.exists()  # nothing written
    assert completed.stderr.strip().splitlines() == [
        "forgetbench study: error: --eval-backend vllm: vllm cannot be imported here (ModuleNotFoundError: No "
        "module named 'vllm'); install vllm on a machine with a CUDA GPU, or use --eval-backend forgetbench"]


def test_the_vllm_backend_evaluates_through_lmms_evals_own_wrapper(monkeypatch, tmp_path):
    from forgetbench import evaluate
    from forgetbench.study import baseline_key, eval_command

    monkeypatch.setattr(evaluate, "vllm_missing", lambda: None)  # as where vllm imports
    plan = _plan("--eval-backend", "vllm", "--tensor-parallel-size", "2", "--batch-size", "16", "--limit", "5")
    assert plan.eval_backend == "vllm" and plan.backend_args == (("tensor_parallel_size", 2),)
    command = eval_command(plan, "/ckpt/lora", tmp_path / "out")
    assert command[1:] == [
        "-m", "lmms_eval", "--model", "vllm", "--model_args",
        "model=/ckpt/lora,tensor_parallel_size=2,gpu_memory_utilization=0.8",
        "--tasks", "forgetbench_lab_digits,forgetbench_lab_color,forgetbench_lab_shape,forgetbench_lab_count,"
        "forgetbench_lab_printed",
        "--batch_size", "16", "--log_samples", "--output_path", str(tmp_path / "out"), "--limit", "5"]
    default = _plan("--batch-size", "16", "--limit", "5")
    assert eval_command(default, "/ckpt/lora", tmp_path / "out")[3:7] == [
        "--model", "forgetbench", "--model_args", "pretrained=/ckpt/lora,device=cpu"]
    # another backend is another baseline; the default study's signature is what it was before backends existed
    assert baseline_key(plan) != baseline_key(default)
    assert "eval_backend" not in default.signature() and plan.signature()["eval_backend"] == "vllm"


def test_the_vllm_backend_refuses_what_it_cannot_run(monkeypatch):
    from forgetbench import evaluate
    from forgetbench.study import StudyError

    monkeypatch.setattr(evaluate, "vllm_missing", lambda: None)
    with pytest.raises(StudyError) as closed:
        _plan("--eval-backend", "vllm", "--upstream", "forgetbench_lab_shape_closed,forgetbench_lab_color")
    assert str(closed.value) == ("--eval-backend vllm: lmms-eval's vllm wrapper cannot score closed-set tasks (it "
                                 "has no loglikelihood): forgetbench_lab_shape_closed")
    with pytest.raises(StudyError) as processes:
        _plan("--eval-backend", "vllm", "--num-processes", "2")
    assert str(processes.value).startswith("--num-processes 2: not with --eval-backend vllm")
    with pytest.raises(StudyError) as stray:
        _plan("--gpu-memory-utilization", "0.5")
    assert str(stray.value) == "--gpu-memory-utilization: only for --eval-backend vllm (the backend is forgetbench)"


def test_throughput_counts_the_scored_samples_and_names_both_clocks(tmp_path):
    from forgetbench.evaluate import throughput

    folder = tmp_path / "eval" / "model"
    folder.mkdir(parents=True)
    (folder / "20260101_000000_results.json").write_text(json.dumps({
        "results": {}, "config": {"model": "forgetbench"}, "total_evaluation_time_seconds": "12.5",
        "n-samples": {"b": {"original": 300, "effective": 24}, "a": {"original": 200, "effective": 26}}}))
    assert throughput(tmp_path / "eval", 20.0) == {
        "backend": "forgetbench", "samples": 50, "by_task": {"a": 26, "b": 24}, "wall_seconds": 20.0,
        "samples_per_second": 2.5, "lmms_eval_seconds": 12.5, "lmms_eval_samples_per_second": 4.0}
    assert throughput(tmp_path / "eval", None)["samples_per_second"] is None  # no clock, no rate


def test_answer_kinds_count_drift_to_the_downstream_labels(tmp_path):
    """EMT's drift, measured: shape answers that are digits (the tuned-on labels) are counted apart from other
    hallucinations; a label the task itself has never counts as drift."""
    from forgetbench.study.report import answer_kinds

    log = tmp_path / "model" / "20261202_samples_forgetbench_lab_shape.jsonl"
    log.parent.mkdir()
    answers = [("circle", "circle"), ("square", "circle"), ("7", "circle"), ("3 dots", "cross"), ("blue", "square"),
               ("circle square", "square")]
    log.write_text("".join(json.dumps({"filtered_resps": [a], "target": t}) + "\n" for a, t in answers))
    digits = tuple(str(d) for d in range(10))
    assert answer_kinds(tmp_path, "forgetbench_lab_shape", ("circle", "square", "triangle", "cross"), digits) == {
        "correct": 1, "wrong_label": 1, "multiple_labels": 1, "hallucination": 3, "downstream_label": 2}
    assert answer_kinds(tmp_path, "forgetbench_lab_shape", ("circle", "square", "triangle", "cross", "7", "3"),
                        digits)["downstream_label"] == 0


# -- the model's recipe configs, and the logs a failure names ----------------------------------------------------


def test_the_recipe_configs_follow_the_models_config_not_its_name(tmp_path):
    """The family comes from config.json's model_type (recipes/configs/_sources/models.yml), the lab by its alias
    first (its config says llava, as LLaVA-1.5's does)."""
    from forgetbench.checkpoint import lab_base_model_path
    from forgetbench.study import StudyError, config_family

    assert config_family("forgetbench-lab") == config_family(str(lab_base_model_path())) == "lab"
    folder = tmp_path / "my-llava-1.5-finetune"  # a name that would once have picked llava-1.5-7b
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    plan = _plan("--model", str(folder), "--methods", "lora", "--downstream", "forgetbench_lab_digits")
    assert plan.arms[0].config == str(REPO / "recipes" / "configs" / "qwen2-vl-2b" / "lora.yaml")
    (folder / "config.json").write_text(json.dumps({"model_type": "mllama"}))
    with pytest.raises(StudyError) as unknown:
        config_family(str(folder))
    from forgetbench.train.configs import load_sources

    known = ", ".join(e["model_type"] for e in load_sources()["models"].values() if "model_type" in e)
    assert str(unknown.value) == (
        f"--model {folder}: no recipe configs for model_type mllama (known: {known}); pass each arm's recipe "
        "config in a study YAML (--config study.yaml; arms: NAME: {recipe, config})")


def test_a_hub_model_whose_config_cannot_be_read_is_refused_in_one_line_unless_the_arms_name_configs(tmp_path):
    hub_id = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"  # unreachable here (HF_HUB_OFFLINE, no network)
    out = tmp_path / "study"
    completed = subprocess.run([sys.executable, "-m", "forgetbench.cli", "study", "--out", str(out), "--model",
                                hub_id, "--methods", "lora", "--downstream", "forgetbench_lab_digits"],
                               capture_output=True, text=True, check=False)
    assert completed.returncode == 2 and not out.exists()
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith(f"forgetbench study: error: --model {hub_id}: cannot read its config to choose recipe "
                           "configs (") and line.endswith("pass each arm's recipe config in a study YAML "
                                                          "(--config study.yaml; arms: NAME: {recipe, config})")
    config = tmp_path / "study.yaml"
    config.write_text(f"model: {hub_id}\ndownstream: forgetbench_lab_digits\narms:\n  lora: {{recipe: lora, config: "
                      f"{REPO}/recipes/configs/llava-onevision-0.5b/lora.yaml}}\n")
    plan = _plan("--config", str(config))  # no config.json needed: the arm names its recipe config
    assert plan.model == hub_id and plan.arms[0].config.endswith("llava-onevision-0.5b/lora.yaml")


def test_an_evaluation_without_results_names_its_real_log(monkeypatch, tmp_path):
    from forgetbench.study import State, StudyError, steps

    plan = _plan("--limit", "2")
    state = State.open(tmp_path / "out", plan, overwrite=False)
    # lmms-eval exits 0 when evaluation fails: a command that succeeds and writes nothing stands in for it
    monkeypatch.setattr(steps, "eval_command", lambda *a: [sys.executable, "-c", "print('no results')"])
    with pytest.raises(StudyError) as info:
        steps.evaluate_into("eval/full_st@wise-0.5", "/ckpt", "full_st@wise-0.5", plan, state, dict(os.environ))
    log = state.out / "logs" / "eval_full_st@wise-0.5.log"
    assert str(info.value).endswith(f"; see {log}") and log.read_text() == "no results\n"


def test_a_failing_arm_names_the_log_that_says_why(lab_study, tmp_path):
    """A real study whose arm cannot start (a recipe argument that does not exist): the one line names the log,
    and that file holds the recipe's own complaint."""
    out = tmp_path / "study"
    command = _study(lab_study, out, "--methods", "lora")
    command[command.index("--recipe-args") + 1] = "--no_such_option 3"
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr[-2000:]
    (line,) = completed.stderr.strip().splitlines()
    log = out.resolve() / "logs" / "train_lora.log"
    assert line.startswith("forgetbench study: error: step train/lora exited ") and line.endswith(f"; see {log}")
    assert "no_such_option" in log.read_text()
    assert list(json.loads((out / "study.json").read_text())["steps"]) == ["baseline"]  # kept for the rerun
