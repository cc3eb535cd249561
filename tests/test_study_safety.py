"""What the study may delete, lock, accept and render (issue 19): refusals before anything runs, --overwrite that
removes only the study's own outputs, one study per --out, one writer per cached baseline, checked cache entries,
a pinned hub revision, and a report that escapes what models and data say. No test here trains or evaluates."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from forgetbench import study
from forgetbench.study import State, StudyError, steps

# A process that holds a filelock until its stdin closes: another study, as far as the lock can tell.
HOLDER = ("import sys; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
          "print('held', flush=True); sys.stdin.read()")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    study.configure_parser(parser)
    return parser.parse_args(list(argv))


def _refusal(capsys, *argv: str) -> str:
    """The one line ``forgetbench study ARGV`` refuses with (exit 2), run in this process."""
    assert study.run(_args(*argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0].removeprefix("forgetbench study: error: ")


def _hold(lock_file: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_file)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def _a_study_folder(out: Path) -> State:
    """A study's folder as a study leaves it (every kind of output), plus the user's own files beside them."""
    state = State.open(out, study.plan_from_args(_args("--out", str(out))), overwrite=False)
    state.finish("baseline", seconds=1.0)
    for name in ("eval/pre/m/x_results.json", "arms/lora/model.safetensors", "logs/train_lora.log", "compare.json",
                 "compare.md", "compare.csv", "forgotten.csv", "learned.csv", "ef.png", "ef.svg", "report.html",
                 "summary.txt", ".summary.txt.k2j3.tmp", "notes.txt", "mine/data.csv"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    return state


# -- (a) one rule for deleting -----------------------------------------------------------------------------------


def test_overwrite_removes_only_the_studys_outputs_and_names_what_it_leaves(tmp_path, capsys):
    out = tmp_path / "study"
    _a_study_folder(out)
    plan = study.plan_from_args(_args("--out", str(out), "--limit", "3"))
    state = State.open(out, plan, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["logs", "mine", "notes.txt", "study.json"]
    assert (out / "mine" / "data.csv").read_text() == "x" and not any((out / "logs").iterdir())
    assert json.loads(state.file.read_text()) == {"signature": plan.signature(), "steps": {}}  # claimed at once
    assert "left what the study did not write: mine, notes.txt" in capsys.readouterr().out


@pytest.mark.parametrize("place", ["no study.json", "home", "cwd", "git root"])
def test_overwrite_of_a_folder_that_is_not_a_studys_is_refused_and_every_file_stays(tmp_path, capsys, monkeypatch,
                                                                                    place):
    out = tmp_path / "folder"
    if place == "no study.json":
        out.mkdir()
        (out / "eval").mkdir()
        (out / "report.html").write_text("mine")
    else:
        _a_study_folder(out)
    if place == "home":
        monkeypatch.setenv("HOME", str(out))
    elif place == "cwd":
        monkeypatch.chdir(out)
    elif place == "git root":
        (out / ".git").mkdir()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    line = _refusal(capsys, "--out", str(out), "--overwrite")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    expected = {"no study.json": f"--overwrite: --out {out} holds no study.json, so it is not a study's folder; "
                                 "nothing was removed (remove it yourself, or choose another --out)",
                "home": f"--out {out}: the home folder; give the study a folder of its own (such as runs/my-study); "
                        "nothing was removed",
                "cwd": f"--out {out}: the current directory; give the study a folder of its own (such as "
                       "runs/my-study); nothing was removed",
                "git root": f"--out {out}: a git work tree's root; give the study a folder of its own (such as "
                            "runs/my-study); nothing was removed"}
    assert line == expected[place]


def test_the_root_folder_is_never_a_study_folder():
    from forgetbench.study import check_out

    with pytest.raises(StudyError, match="^--out /: the root folder; give the study a folder of its own"):
        check_out(Path("/"), overwrite=True)


def test_a_study_json_that_is_not_a_studys_is_neither_resumed_nor_removed(tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text("not json {")
    (out / "notes.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):
        line = _refusal(capsys, "--out", str(out), *extra)
        assert line.startswith(f"--out {out}: study.json is not a forgetbench study's (not JSON: ")
        assert line.endswith("move it away or choose another --out")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "study.json"]


def test_remove_owned_follows_no_link_and_keeps_what_it_does_not_own(tmp_path):
    from forgetbench.outputs import remove_owned

    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    folder = tmp_path / "scratch"
    folder.mkdir()
    (folder / "eval").symlink_to(outside, target_is_directory=True)
    (folder / "DONE").write_text("{}")
    assert remove_owned(folder, ["eval", "DONE"]) == [] and not folder.exists()  # emptied, so removed
    assert (outside / "keep.txt").read_text() == "x"  # the link went, not what it pointed to


# -- (b) names that become paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "why"), [
    ("../x", "it holds a path separator"), ("a/b", "it holds a path separator"),
    ("a\\b", "it holds a path separator"), (".", "it starts with '.' (a hidden or parent folder)"),
    ("..", "it starts with '.' (a hidden or parent folder)"), (".lora.partial", "it starts with '.' (a hidden or "
                                                                                  "parent folder)"),
    ("a,b", "it holds ',' (it splits lmms-eval's model_args)"), ("a=b", "it holds '=' (it splits lmms-eval's "
                                                                        "model_args)"),
    ("pre", "'pre', 'post' are compare's names for the two sides"),
    ("post", "'pre', 'post' are compare's names for the two sides"),
    ("lora@wise-0.5", "it holds '@' (it names an arm's points: <arm>@wise-0.5)"), ("x*", "it holds a wildcard"),
])
def test_an_arm_name_that_cannot_be_a_folder_is_refused_before_anything_runs(tmp_path, capsys, name, why):
    config = tmp_path / "study.yaml"
    config.write_text(json.dumps({"arms": {name: {"recipe": "lora"}}}))
    out = tmp_path / "study"
    assert _refusal(capsys, "--out", str(out), "--config", str(config)) == f"arm {name!r}: not a usable name: {why}"
    assert not out.exists()


def test_empty_and_repeated_arm_names_are_refused(capsys, tmp_path):
    out = tmp_path / "study"
    assert _refusal(capsys, "--out", str(out), "--methods", "lora,") == "arm '': not a usable name: it is empty"
    assert _refusal(capsys, "--out", str(out), "--methods", "lora,lora") == (
        "--methods lora,lora: an arm is named twice (a study YAML gives two arms of one recipe names of their own)")
    assert not out.exists()


def test_a_point_whose_name_would_leave_the_folder_is_refused_before_it_is_evaluated(monkeypatch, tmp_path):
    from forgetbench import train

    arm = study.Arm("lora", "lora", "c.yaml")
    monkeypatch.setattr(train, "extra_points", lambda folder: [("../../evil", folder / "x")])
    with pytest.raises(StudyError, match=r"^point 'lora@../../evil': not a usable name: it holds a path separator$"):
        study.points_of(arm, tmp_path)


# -- (c) locks ---------------------------------------------------------------------------------------------------


def test_a_second_study_on_the_same_out_is_refused_while_the_first_runs_and_a_killed_ones_lock_does_not_block(
        tmp_path, capsys):
    out = tmp_path / "study"
    _a_study_folder(out)
    holder = _hold(out / study.LOCK_NAME)  # the first study, running
    try:
        assert _refusal(capsys, "--out", str(out)) == (
            f"--out {out}: another forgetbench study, or a step an earlier run of it started, is running on it (it "
            f"holds {out / study.LOCK_NAME}); wait for it to end, or choose another --out")
    finally:
        holder.send_signal(signal.SIGKILL)  # killed, as a user's kill -9 or an OOM kill would
        holder.wait()
    with study.state.study_lock(out):  # its OS lock went with it
        pass


# A study controller (the lock, then one step that sleeps and says its pid), to be killed on its own.
CONTROLLER = """
import sys
from pathlib import Path
from forgetbench.study import steps, state
out = Path(sys.argv[1])
with state.study_lock(out) as fd:
    step = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
    steps.run_logged("eval/x", [sys.executable, "-c", step], out, {}, (fd,))
"""


def test_a_step_left_running_by_a_study_killed_alone_keeps_out_locked_until_it_ends(tmp_path):
    """kill -9 of the study's own pid leaves the step it started running: a rerun must not start that step again
    beside it (both would write the same partial folder), so the step holds OUT's lock until it ends."""
    out = tmp_path / "study"
    out.mkdir()
    controller = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(out)])
    log = steps.log_path(out, "eval/x")
    deadline = time.monotonic() + 60
    while not (log.is_file() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    step_pid = int(log.read_text())
    controller.send_signal(signal.SIGKILL)
    controller.wait()
    try:
        with pytest.raises(StudyError, match="a step an earlier run of it started, is running on it"):
            with study.state.study_lock(out):
                pass
    finally:
        os.kill(step_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the orphan is gone once init has reaped it
        try:
            with study.state.study_lock(out):
                break
        except StudyError:
            time.sleep(0.1)
    else:
        pytest.fail("the lock outlived the step that held it")


def _fake_evaluation(folder: Path) -> Path:
    (folder / "m").mkdir(parents=True)
    (folder / "m" / "x_results.json").write_text(json.dumps({"results": {}, "config": {"model": "forgetbench"}}))
    (folder / "m" / "x_samples_t.jsonl").write_text('{"doc_id": 0}\n')
    return folder


def test_a_second_study_needing_the_same_baseline_waits_then_reuses_it(tmp_path, monkeypatch):
    from forgetbench.study import cache

    plan = study.plan_from_args(_args("--out", str(tmp_path / "study"), "--limit", "2"))
    location = study.model_location(plan.model, plan.revision)
    root = tmp_path / "cache"
    root.mkdir()
    key = study.baseline_key(plan, location)
    state = State.open(tmp_path / "study", plan, overwrite=False)
    waiting = threading.Event()
    said = []

    def say(*args, **kwargs):
        said.append(" ".join(map(str, args)))
        if "waiting for it" in said[-1]:
            waiting.set()

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the baseline was evaluated again instead of reused")

    monkeypatch.setattr(cache, "print", say, raising=False)
    monkeypatch.setattr(steps, "evaluate_into", no_evaluation)
    holder = _hold(root / f".{key}.lock")  # the first study, evaluating the base model
    errors = []
    second = threading.Thread(target=lambda: _capture(errors, steps.baseline, plan, state, root, {}, location))
    try:
        second.start()
        assert waiting.wait(timeout=300), said
        speed = {"backend": "forgetbench", "samples": 2, "by_task": {"t": 2}, "wall_seconds": 5.0,
                 "samples_per_second": 0.4}
        assert cache.Entry(root, key).store(_fake_evaluation(tmp_path / "evaluated"), {"throughput": speed})
    finally:
        holder.stdin.close()  # the first study ends, releasing the entry
        holder.wait()
        second.join(timeout=300)
    assert not errors, errors
    assert state.done("baseline")["cached"] == str(root / key)
    assert state.done("baseline")["throughput"] == {**speed, "from_cache": True}
    assert (state.out / "eval" / "pre" / "m" / "x_results.json").is_file()


def _capture(errors: list, function, *args) -> None:
    try:
        function(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        errors.append(exc)


# -- (d) inputs refused in one line ------------------------------------------------------------------------------


@pytest.mark.parametrize(("yaml_text", "line"), [
    ("arms: {lora: {recipe: lora}}\nlimit: -1\n", "--config {config}: limit: -1: must be a whole number of "
                                                  "documents, at least 1 (leave it out to evaluate every document)"),
    ("arms: {lora: {recipe: lora}}\ndownstream: 5\n", "--config {config}: downstream: must be task names (a list, "
                                                      "or one comma-separated string), not 5"),
    ("arms: {lora: 5}\n", "--config {config}: arm 'lora': must map recipe, config, args to values, not 5"),
    ("arms: {lora: {recipe: lora, args: --output_dir /tmp/x}}\n",
     "arm 'lora': args: --output_dir is the study's to set (the study puts each arm in OUT/arms/<arm>)"),
])
def test_a_study_yaml_with_bad_values_is_refused_in_one_line(tmp_path, capsys, yaml_text, line):
    config = tmp_path / "study.yaml"
    config.write_text(yaml_text)
    assert _refusal(capsys, "--out", str(tmp_path / "study"), "--config", str(config)) == line.format(config=config)
    assert not (tmp_path / "study").exists()


def test_a_study_yaml_with_python_tags_builds_nothing_and_is_refused_in_one_line(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    flag = tmp_path / "ran"
    config.write_text(f'arms: !!python/object/apply:os.system ["touch {flag}"]\n')
    line = _refusal(capsys, "--out", str(tmp_path / "study"), "--config", str(config))
    assert line.startswith(f"--config {config}: not a YAML file the study can read (could not determine a "
                           "constructor for the tag")
    assert not flag.exists() and not (tmp_path / "study").exists()


@pytest.mark.parametrize(("argv", "line"), [
    (["--limit", "0"], "--limit 0: must be a whole number of documents, at least 1 (leave it out to evaluate every "
                       "document)"),
    (["--limit", "-1"], "--limit -1: must be a whole number of documents, at least 1 (leave it out to evaluate "
                        "every document)"),
    (["--recipe-args", "--output_dir X"], "--recipe-args: --output_dir is the study's to set (the study puts each "
                                          "arm in OUT/arms/<arm>)"),
    (["--recipe-args=--output-dir=X"], "--recipe-args: --output-dir is the study's to set (the study puts each "
                                          "arm in OUT/arms/<arm>)"),
    (["--recipe-args", "--model_name_or_path m"], "--recipe-args: --model_name_or_path is the study's to set (use "
                                                  "--model)"),
    (["--recipe-args", "--max_steps '3"], "--recipe-args: \"--max_steps '3\": No closing quotation"),
    (["--revision", "abc"], "--revision abc: only for a hub model (--model forgetbench-lab is the lab model)"),
])
def test_command_line_values_the_study_cannot_honour_are_refused_in_one_line(tmp_path, capsys, argv, line):
    assert _refusal(capsys, "--out", str(tmp_path / "study"), *argv) == line
    assert not (tmp_path / "study").exists()


def test_an_out_path_that_would_split_lmms_evals_model_args_is_refused(tmp_path, capsys):
    out = tmp_path / "a,b"
    assert _refusal(capsys, "--out", str(out)) == (f"--out {out}: holds ',' or '=', which split lmms-eval's "
                                                   "model_args; use a path without them")


# -- (e) the cache -----------------------------------------------------------------------------------------------


def test_a_cached_baseline_whose_files_changed_is_evaluated_again_saying_why(tmp_path, capsys):
    from forgetbench.study import cache

    entry = cache.Entry(tmp_path, "k" * 20)
    assert entry.store(_fake_evaluation(tmp_path / "evaluated"), {"throughput": {}})
    done = json.loads((entry.path / "DONE").read_text())
    results = "eval/m/x_results.json"
    assert done["files"][results]["size"] == (entry.path / results).stat().st_size
    assert entry.reusable() == done
    (entry.path / results).write_text((entry.path / results).read_text().replace("forgetbench", "forgetbenck"))
    assert entry.reusable() is None
    assert capsys.readouterr().out.splitlines() == [
        f"[baseline] the cached evaluation {entry.path} does not match what it recorded ({results} has another "
        "sha256 than its DONE records); evaluating the base model again"]
    assert not entry.path.exists()  # removed: its own two entries, then the empty folder
    (entry.path / "eval").mkdir(parents=True)
    (entry.path / "DONE").write_text('{"throughput": {}}')  # an entry of an older forgetbench
    assert entry.reusable() is None and "its DONE records no sizes and checksums" in capsys.readouterr().out


def test_a_cache_that_cannot_be_written_warns_once_and_the_study_resumes(tmp_path, capsys, monkeypatch):
    plan = study.plan_from_args(_args("--out", str(tmp_path / "study"), "--limit", "2"))
    state = State.open(tmp_path / "study", plan, overwrite=False)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # as unwritable as a read-only mount, even for root
    evaluated = []

    def evaluate_into(name, model, point, plan, state, env):
        evaluated.append(point)
        _fake_evaluation(state.out / "eval" / point)
        return 1.0, ["lmms-eval"], {"samples": 2}

    monkeypatch.setattr(steps, "evaluate_into", evaluate_into)
    location = study.model_location(plan.model, None)
    steps.baseline(plan, state, blocked / "cache", {}, location)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"[baseline] cannot store the evaluation in the cache ({blocked}")
    assert out[0].endswith("the study goes on without caching it")
    assert state.done("baseline") == {"seconds": 1.0, "cached": None, "stored": None, "command": ["lmms-eval"],
                                      "throughput": {"samples": 2}}
    rerun = State.open(tmp_path / "study", plan, overwrite=False)
    steps.baseline(plan, rerun, blocked / "cache", {}, location)  # resumes: nothing evaluated again
    assert evaluated == ["pre"]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> tuple[Path, str, str]:
    """A local Hugging Face cache holding two snapshots of org/tiny, main at the first: what an offline machine
    that once downloaded them has."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    repo = root / "models--org--tiny"
    first, second = "1" * 40, "2" * 40
    for sha in (first, second):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(first)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return repo, first, second


def test_a_hub_model_is_keyed_by_its_revision_and_revision_pins_the_snapshot(hub_cache, tmp_path):
    import dataclasses

    repo, first, second = hub_cache
    plans = {sha: study.plan_from_args(_args("--out", str(tmp_path / "s"), "--model", "org/tiny", "--revision", sha,
                                             "--methods", "lora", "--downstream", "forgetbench_lab_digits"))
             for sha in (first, second)}
    assert plans[first].revision == first and plans[first].signature()["revision"] == first  # recorded
    assert plans[first].arms[0].config.endswith("recipes/configs/qwen2-vl-2b/lora.yaml")  # its snapshot's config
    assert study.model_location("org/tiny", first) == str(repo / "snapshots" / first)
    keys = {sha: study.baseline_key(plan) for sha, plan in plans.items()}
    assert keys[first] != keys[second]
    # unpinned, the model is keyed by the commit main resolves to (here the local cache's, offline)
    assert study.baseline_key(dataclasses.replace(plans[first], revision=None)) == keys[first]
    assert "revision" not in dataclasses.replace(plans[first], revision=None).signature()


def test_a_revision_that_cannot_be_had_is_refused_in_one_line(hub_cache, tmp_path, capsys):
    line = _refusal(capsys, "--out", str(tmp_path / "s"), "--model", "org/tiny", "--revision", "3" * 40)
    assert line.startswith(f"--model org/tiny --revision {'3' * 40}: cannot get that snapshot (")


# -- (f) the report escapes what models, data and users say ------------------------------------------------------


class _Markup(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_the_report_shows_hostile_answers_questions_and_paths_as_text(tmp_path):
    from types import SimpleNamespace

    from forgetbench.study.report import write_report

    hostile = "<img src=x onerror=alert(1)>"
    model = "/models/<script>alert('model')</script>"
    plan = study.Plan(model, ("forgetbench_lab_digits",), ("forgetbench_lab_shape",),
                      (study.Arm("lora", "lora", "c.yaml"),), limit=2)
    for point in ("pre", "lora"):
        log = tmp_path / "eval" / point / "m" / "x_samples_forgetbench_lab_shape.jsonl"
        log.parent.mkdir(parents=True)
        log.write_text(json.dumps({"doc_id": 0, "filtered_resps": [hostile], "target": "circle"}) + "\n")
    task = {"role": "upstream", "pre": 50.0, "post": 0.0, "delta": -50.0, "delta_ci": [-60.0, -40.0],
            "flips": {"forgotten": 1, "learned": 0}, "mcnemar": {"pvalue": 0.5}}
    method = {"E": 1.0, "F": -50.0, "O": -49.0, "E_ci": None, "F_ci": None, "tasks": {hostile: task}}
    row = {"method": "lora", "task": "forgetbench_lab_shape", "doc_id": 0, "input": "<script>alert(2)</script>",
           "target": "circle", "pre_answer": "circle", "post_answer": hostile}
    comparison = SimpleNamespace(report={"methods": {"lora": method}, "bootstrap": {"confidence": 0.95,
                                                                                    "resamples": 10}},
                                 forgotten=[row], learned=[])
    steps_record = {"eval/lora": {"seconds": 1.0, "command": ["lmms-eval", hostile]}}
    html = write_report(tmp_path, plan, {"steps": steps_record}, comparison, ["lora"]).read_text()
    parser = _Markup()
    parser.feed(html)
    tags = parser.tags
    assert [tag for tag, _ in tags].count("script") == 1  # the template's own filter script, nothing else
    assert not [(tag, attrs) for tag, attrs in tags if any(name.startswith("on") for name in attrs)]
    assert all(attrs.get("src", "").startswith("data:image/png;base64,") for tag, attrs in tags if tag == "img")
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "/models/&lt;script&gt;alert(&#39;model&#39;)&lt;/script&gt;" in html
