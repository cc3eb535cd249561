"""Pairing refuses what differs, on real lmms-eval output: lmms-eval's CLI runs the lab base model greedily,
then with sampling (``--gen_kwargs``), and a perturbed copy of it ("tuned" from the base, with a manifest). Variants
of the greedy run (another wrapper, a chat template, ...) are edited copies of its real results.json. Every
difference is one line, exit 2, no file; ``--allow-mismatch`` lists each; ``forgetbench stages`` checks lineage;
lmms-eval's own paired comparison agrees with forgetbench's intervals.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import lmms_eval_runs, perturbed_copy

from forgetbench.checkpoint import MANIFEST_NAME, lab_base_model_path
from forgetbench.compare import main
from forgetbench.compare.stages import main as stages_main

DOWN, UP = "forgetbench_lab_digits", "forgetbench_lab_shape"
LIMIT = 100


def evaluate_args(out: Path, model: Path, *extra: str) -> list[str]:
    """``lmms-eval --model forgetbench`` on the lab tasks, with sample logs, into ``out``."""
    return ["--model", "forgetbench", "--model_args", f"pretrained={model}", "--tasks", f"{DOWN},{UP}",
            "--batch_size", "32", "--limit", str(LIMIT), "--output_path", str(out), "--log_samples", *extra]


def perturbed_model(folder: Path) -> Path:
    """A noisy copy of the lab base model with a manifest saying it was tuned from the base: a stand-in fine-tune
    that forgets some shapes (1.5 standard deviations: the lab base shrugs off less noise on the first 100 shape
    questions)."""
    perturbed_copy(folder, 1.5)
    manifest(folder, str(lab_base_model_path()))
    return folder


def manifest(folder: Path, base: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).write_text(json.dumps({"base_model": base, "base_model_path": base, "method": "noise",
                                                    "trainable_parameters": 1, "seed": 0, "steps": 0}))
    return folder


@pytest.fixture(scope="session")
def lab_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pairing")
    base = lab_base_model_path()
    # No workaround for lmms-eval's recorded version (`git describe` of the repository around site-packages, which
    # moves whenever work lands between these evaluations): --model forgetbench records the installed lmms-eval
    # version, which compare pairs on (tests/test_compare_version.py).
    runs = {"greedy": (root / "greedy", base, ()),
            "sampled": (root / "sampled", base, ("--gen_kwargs", "temperature=1.5,do_sample=True")),
            "tuned": (root / "tuned", perturbed_model(root / "noisy_model"), ())}
    lmms_eval_runs([evaluate_args(out, model, *extra) for out, model, extra in runs.values()], cwd=root)
    for out, _, _ in runs.values():
        assert len(list(out.glob("*/*_results.json"))) == 1  # lmms-eval exits 0 even on failure
    return {name: out for name, (out, _, _) in runs.items()}


def results_file(run: Path) -> Path:
    (file,) = run.glob("*/*_results.json")
    return file


def variant(run: Path, folder: Path, change) -> Path:
    """A copy of a real lmms-eval output folder whose results.json ``change(results)`` edited."""
    shutil.copytree(run, folder)
    file = results_file(folder)
    results = json.loads(file.read_text())
    change(results)
    file.write_text(json.dumps(results))
    return folder


def compare(pre: Path, post: Path, *extra: str) -> int:
    return main(["--pre", str(pre), "--post", str(post), "--downstream", DOWN, "--upstream", UP,
                 "--resamples", "2000", *extra])


def refused_line(capsys, rc: int, out: Path) -> str:
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "" and not out.exists(), captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    prefix = "forgetbench compare: error: "
    assert lines[0].startswith(prefix)
    return lines[0][len(prefix):]


SETTINGS = " (--allow-mismatch accepts it and lists it in the report)"


def test_real_runs_pair_with_themselves(lab_runs, tmp_path, capsys):
    copy = shutil.copytree(lab_runs["greedy"], tmp_path / "again")
    assert compare(lab_runs["greedy"], copy, "--json", str(tmp_path / "r.json")) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pairing"]["mismatches"] == [] and report["E"] == report["F"] == 0
    assert report["tasks"][DOWN]["n"] == LIMIT and report["tasks"][DOWN]["unit"] == "document"


def test_other_generation_settings_are_refused(lab_runs, tmp_path, capsys):
    out = tmp_path / "o"
    rc = compare(lab_runs["greedy"], lab_runs["sampled"], "--out", str(out), "--json", str(tmp_path / "r.json"))
    line = refused_line(capsys, rc, out)
    assert line == (f"--post {lab_runs['sampled']}: generation settings of task '{DOWN}' differ from --pre: "
                    "temperature pre 0.0; post 1.5, do_sample pre false; post true" + SETTINGS)
    assert not (tmp_path / "r.json").exists()


def _set(*path, value):
    def change(results):
        target = results
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _both(*changes):
    def change(results):
        for c in changes:
            c(results)
    return change


TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"
SHA = hashlib.sha256(TEMPLATE.encode()).hexdigest()
BASE = str(lab_base_model_path())

# (id, edit of a copy of the greedy run used as --post, the refusal after "--post DIR: ")
VARIANTS = [
    ("wrapper", _set("config", "model", value="llava_hf"),
     'evaluation backend (config.model, lmms-eval --model) differs from --pre: pre "forgetbench"; post "llava_hf"'),
    # --eval-backend vllm: lmms-eval's vLLM wrapper names the checkpoint model=, not pretrained=
    ("vllm-backend", _both(_set("config", "model", value="vllm"), _set(
        "config", "model_args", value=f"model={BASE},tensor_parallel_size=1,gpu_memory_utilization=0.8")),
     'evaluation backend (config.model, lmms-eval --model) differs from --pre: pre "forgetbench"; post "vllm"'),
    ("model-class", _set("config", "model_backend", value="lmms_eval.models.simple.llava_hf.LlavaHf (simple)"),
     'model class (config.model_backend) differs from --pre: pre "forgetbench.evaluate.model.ImageTextModel '
     '(simple)"; post "lmms_eval.models.simple.llava_hf.LlavaHf (simple)"'),
    ("chat-template", _both(_set("chat_template", value=TEMPLATE), _set("chat_template_sha", value=SHA)),
     f'chat template (sha256) differs from --pre: pre null; post "{SHA}"'),
    ("system-instruction", _set("system_instruction", value="Answer in French."),
     'system instruction differs from --pre: pre null; post "Answer in French."'),
    ("dtype", _set("config", "model_args", value=f"pretrained={BASE},dtype=bfloat16"),
     'dtype (model_args) differs from --pre: pre null; post "bfloat16"'),
    ("torch-dtype", _set("config", "model_args", value=f"pretrained={BASE},torch_dtype=float16"),
     'dtype (model_args) differs from --pre: pre null; post "float16"'),
    ("model-argument", _set("config", "model_args", value=f"pretrained={BASE},max_pixels=1000"),
     "model argument 'max_pixels' differs from --pre: pre null; post \"1000\""),
    ("apply-chat-template", _set("config", "resolved_cli_args", "apply_chat_template", value=True),
     "lmms-eval --apply_chat_template differs from --pre: pre false; post true"),
    ("few-shot", _both(_set("n-shot", UP, value=2), _set("configs", UP, "num_fewshot", value=2)),
     f"few-shot examples of task '{UP}' differ from --pre: pre 0; post 2"),
    ("task-config", _set("configs", UP, "target_delimiter", value="\n"),
     f"config of task '{UP}' differs from --pre: target_delimiter pre \" \"; post \"\\n\""),
    ("task-version", _set("versions", UP, value=2.0), f"version of task '{UP}' differs from --pre: pre 1.0; post 2.0"),
    ("limit", _set("config", "limit", value=50.0), "limit differs from --pre: pre 100.0; post 50.0"),
]


@pytest.mark.parametrize("change, message", [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_each_setting_that_changes_answers_is_refused(lab_runs, tmp_path, capsys, change, message):
    post = variant(lab_runs["greedy"], tmp_path / "post", change)
    version = json.loads(results_file(lab_runs["greedy"]).read_text())["lmms_eval_version"]
    out = tmp_path / "o"
    line = refused_line(capsys, compare(lab_runs["greedy"], post, "--out", str(out)), out)
    hint = SETTINGS if message.split(" ")[0] not in ("version", "limit") else \
        " (--allow-mismatch compares the common samples only)"
    assert line == f"--post {post}: {message.format(version=version)}{hint}"


def test_installed_lmms_eval_version_is_refused_and_recorded_string_is_not(lab_runs, tmp_path, capsys):
    """--model forgetbench records the installed lmms-eval version beside the run: compare pairs on it, and a
    recorded lmms_eval_version (branch@commit of the repository around site-packages) that differs alone pairs."""
    post = variant(lab_runs["greedy"], tmp_path / "post", _set("lmms_eval_version", value="main@0123abcd"))
    assert compare(lab_runs["greedy"], post) == 0
    capsys.readouterr()
    sidecar = post / "unscorable.json"
    data = json.loads(sidecar.read_text())
    installed = data["versions"]["lmms-eval"]
    data["versions"]["lmms-eval"] = "9.9.9"
    sidecar.write_text(json.dumps(data))
    out = tmp_path / "o"
    line = refused_line(capsys, compare(lab_runs["greedy"], post, "--out", str(out)), out)
    assert line == (f'--post {post}: installed lmms-eval version differs from --pre: pre "{installed}"; '
                    f'post "9.9.9"' + SETTINGS)


def test_what_changes_no_answer_is_not_refused(lab_runs, tmp_path, capsys):
    """batch size, device, seeds, bootstrap settings, the date: recorded, not compared."""
    post = variant(lab_runs["greedy"], tmp_path / "post", _both(
        _set("config", "batch_size", value="1"), _set("config", "device", value="cuda:0"),
        _set("config", "bootstrap_iters", value=0), _set("config", "random_seed", value=7),
        _set("config", "model_args", value=f"pretrained={BASE},device=cpu,batch_size=4"),
        _set("date", value="20270101_000000"), _set("configs", UP, "score_key", value="score")))
    assert compare(lab_runs["greedy"], post) == 0


def test_allow_mismatch_lists_every_tolerated_difference(lab_runs, tmp_path, capsys):
    post = variant(lab_runs["sampled"], tmp_path / "post", _set("system_instruction", value="Be brief."))
    out = tmp_path / "o"
    assert compare(lab_runs["greedy"], post, "--allow-mismatch", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    found = json.loads((out / "compare.json").read_text())["pairing"]["mismatches"]
    assert found == [f'--post {post}: system instruction differs from --pre: pre null; post "Be brief."'] + [
        f"--post {post}: generation settings of task '{t}' differ from --pre: temperature pre 0.0; post 1.5, "
        "do_sample pre false; post true" for t in sorted([DOWN, UP])]
    markdown = (out / "compare.md").read_text()
    for message in found:
        assert f"- {message}" in printed and f"- {message}" in markdown
    assert "Tolerated pairing differences (--allow-mismatch)" in printed


def test_a_real_fine_tune_pairs_and_shows_its_forgetting(lab_runs, tmp_path, capsys):
    assert compare(lab_runs["greedy"], lab_runs["tuned"], "--json", str(tmp_path / "r.json")) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pairing"]["mismatches"] == [] and report["manifest"]["method"] == "noise"
    assert report["tasks"][UP]["delta"] < 0 and report["F_ci"][0] < report["F"] < report["F_ci"][1]


def stage(run: Path, folder: Path, model: Path) -> str:
    return str(variant(run, folder, _set("config", "model_args", value=f"pretrained={model}")))


def test_stages_must_be_tuned_one_from_the_other(lab_runs, tmp_path, capsys):
    first = lab_runs["greedy"]  # stage 1 evaluated the base model
    stranger = stage(lab_runs["tuned"], tmp_path / "s2", manifest(tmp_path / "ckpt", "org/other"))
    argv = ["--stage", f"{DOWN}={first}", "--stage", f"{UP}={stranger}", "--json", str(tmp_path / "s.json")]
    assert stages_main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"forgetbench stages: error: --stage {UP}={stranger}: stage 2 ({UP}) is not tuned from stage 1 ({DOWN}): "
        f"its checkpoint was tuned from 'org/other', but stage 1 evaluated '{BASE}' (--allow-lineage-mismatch "
        "accepts it)"]
    assert not (tmp_path / "s.json").exists()
    assert stages_main([*argv, "--allow-lineage-mismatch"]) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    assert len(report["lineage_mismatches"]) == 1 and "accepted (--allow-lineage-mismatch)" in capsys.readouterr().out
    # The real "fine-tune" was tuned from the base model stage 1 evaluated: accepted as it is.
    assert stages_main(["--stage", f"{DOWN}={first}", "--stage", f"{UP}={lab_runs['tuned']}"]) == 0


def sample_scores(run: Path, task: str, key: str) -> dict[int, float]:
    (file,) = run.glob(f"*/*_samples_{task}.jsonl")
    return {row["doc_id"]: float(row[key]) for row in map(json.loads, file.read_text().splitlines())}


def test_lmms_eval_paired_comparison_agrees_with_forgetbench(lab_runs, tmp_path, capsys):
    """lmms-eval's own paired t-test (what --baseline runs), reading the per-sample score through the task's
    top-level score_key, gives the deltas and, where enough documents flip for a t-interval to be fair, the
    intervals forgetbench's bootstrap gives, within a point."""
    from lmms_eval.evaluator_utils import compute_baseline_comparison

    assert compare(lab_runs["greedy"], lab_runs["tuned"], "--json", str(tmp_path / "r.json"),
                   "--resamples", "20000") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    configs = json.loads(results_file(lab_runs["tuned"]).read_text())["configs"]
    for task in (DOWN, UP):
        key = configs[task]["score_key"]
        assert key == "exact_match"  # lmms-eval read the YAML's top-level score_key
        pre, post = sample_scores(lab_runs["greedy"], task, key), sample_scores(lab_runs["tuned"], task, key)
        theirs = compute_baseline_comparison([post[d] for d in pre], [pre[d] for d in pre], "pre")
        row = report["tasks"][task]
        assert theirs["mean_diff"] * 100 == pytest.approx(row["delta"], abs=1e-9)
        if row["flips"]["forgotten"] + row["flips"]["learned"] >= 10:
            assert [theirs["ci_lower"] * 100, theirs["ci_upper"] * 100] == pytest.approx(row["delta_ci"], abs=1.0)
    assert report["tasks"][UP]["flips"]["forgotten"] >= 10  # the interval check above ran on the upstream task
