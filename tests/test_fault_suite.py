"""The fault suite: generated bad inputs across the pipeline, each either converted or refused in one line, with no
traceback and no partial file (docs/faults.md holds the counts and what the suite found).

Kinds of case: images in training rows and in evaluation documents (every kind of broken or unusual image, table
driven), config and flag faults, output faults (disk full, a failed rename, at a chosen file) and safety cases.
Every case records its outcome; the module prints the summary table at the end (and writes it as JSON to
``$FORGETBENCH_FAULT_SUMMARY`` when set). The long cases (one training run per convertible image kind, the real
lmms-eval CLI on broken documents) are ``@pytest.mark.slow``.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BIN, REPO

from forgetbench.suite import fixtures

LAB_CONFIG = REPO / "recipes" / "configs" / "lab" / "lora.yaml"
# CPU-cheap training: the lab model, a few small steps.
QUICK = ["--config", str(LAB_CONFIG), "--lora_r", "4", "--per_device_train_batch_size", "4", "--max_steps", "1",
         "--logging_steps", "1", "--warmup_steps", "0", "--disable_tqdm", "true"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TRACEBACK = "Traceback (most recent call last)"
RESULTS: list[dict] = []
# refused: one line (or, below the CLI, one exception naming the input or path); converted: converted and used;
# unscored: an evaluation item answered without scoring and counted; checked: a static or API property holds.
OUTCOMES = ("refused", "converted", "unscored", "checked")


def record(kind: str, case: str, outcome: str, stderr: str = "", partial: list | None = None) -> list[str]:
    """One case's outcome for the summary; returns its non-empty stderr lines."""
    assert outcome in OUTCOMES, outcome
    lines = [line for line in stderr.splitlines() if line.strip()]
    RESULTS.append({"kind": kind, "case": case, "outcome": outcome, "stderr_lines": len(lines),
                    "traceback": TRACEBACK in stderr, "partial_files": len(partial or [])})
    return lines


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    if not RESULTS:
        return
    table: dict[str, dict] = {}
    for row in RESULTS:
        entry = table.setdefault(row["kind"], {"cases": 0, **dict.fromkeys(OUTCOMES, 0), "tracebacks": 0,
                                              "partial_files": 0})
        entry["cases"] += 1
        entry[row["outcome"]] += 1
        entry["tracebacks"] += row["traceback"]
        entry["partial_files"] += row["partial_files"]
    lines = [f"fault suite: {'kind':<24} cases " + " ".join(OUTCOMES) + " tracebacks partial_files"]
    lines += [f"             {kind:<24} {e['cases']:>5} " + " ".join(f"{e[o]:>{len(o)}}" for o in OUTCOMES)
              + f" {e['tracebacks']:>10} {e['partial_files']:>13}" for kind, e in table.items()]
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    for line in lines:
        (reporter.write_line if reporter else print)(line)
    if os.environ.get("FORGETBENCH_FAULT_SUMMARY"):
        Path(os.environ["FORGETBENCH_FAULT_SUMMARY"]).write_text(json.dumps({"kinds": table, "cases": RESULTS},
                                                                           indent=2))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- generated images --------------------------------------------------------------------------------------------


def png(image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def forged_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` over one pixel of data: what a decompression bomb or a
    0x0 image looks like to PIL, without building one."""
    from PIL import Image

    data = png(Image.new("L", (1, 1)))
    header = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return data[:8] + struct.pack(">I", 13) + header + struct.pack(">I", zlib.crc32(header)) + data[33:]


def _make(mode: str, value, size=(16, 16), fmt="PNG", **params):
    def build():
        from PIL import Image

        image = Image.new(mode, size, value)
        if fmt == "JPEG":
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG")
            return buffer.getvalue()
        return png(image, **params)
    return build


@dataclass(frozen=True)
class ImageKind:
    name: str
    stored: object  # () -> what the parquet's image column holds for the row: bytes or None
    outcome: str  # "refused" or "converted"
    expect: object  # refused: a substring of the reason; converted: the RGB pixel at (0, 0)


def _palette_transparent():
    from PIL import Image

    image = Image.new("P", (16, 16), 0)
    image.putpalette([10, 20, 30] * 256)
    return png(image, transparency=0)


IMAGE_KINDS = [
    ImageKind("corrupt bytes", lambda: b"not an image at all", "refused", "cannot identify image file"),
    ImageKind("truncated", lambda: png(fixtures.image(5, 64))[:80], "refused", "truncated"),
    ImageKind("missing (None)", lambda: None, "refused", "no image"),
    ImageKind("empty bytes", lambda: b"", "refused", "empty image bytes"),
    ImageKind("zero-size 0x0", lambda: forged_png(0, 0), "refused", "cannot identify image file"),
    ImageKind("huge (bomb warning)", lambda: forged_png(10_000, 10_000), "refused", "decompression-bomb"),
    ImageKind("huge (bomb error)", lambda: forged_png(20_000, 20_000), "refused", "decompression-bomb"),
    ImageKind("CMYK", _make("CMYK", (0, 0, 0, 0), fmt="JPEG"), "converted", (255, 255, 255)),
    ImageKind("16-bit I;16", _make("I;16", 40_000), "converted", (156, 156, 156)),
    ImageKind("palette P", _make("P", 0), "converted", (0, 0, 0)),
    ImageKind("palette + transparency", _palette_transparent, "converted", (255, 255, 255)),
    ImageKind("RGBA", _make("RGBA", (10, 20, 30, 0)), "converted", (255, 255, 255)),
    ImageKind("LA", _make("LA", (100, 255)), "converted", (100, 100, 100)),
    ImageKind("grayscale L", _make("L", 7), "converted", (7, 7, 7)),
    ImageKind("bilevel 1", _make("1", 1), "converted", (255, 255, 255)),
    ImageKind("tiny 1x1", _make("RGB", (1, 2, 3), size=(1, 1)), "converted", (1, 2, 3)),
]
CONVERTIBLE = [k for k in IMAGE_KINDS if k.outcome == "converted"]


def pathvqa_with(path: Path, n: int, rows: dict[int, object]) -> Path:
    """The PathVQA fixture split (``n`` rows) with the image of each row in ``rows`` replaced (bytes or None)."""
    import datasets

    source = fixtures.pathvqa(path.parent / f".{path.stem}-source", "split", n=n)
    table = datasets.Dataset.from_parquet(str(source)).cast_column("image", datasets.Image(decode=False)).to_dict()
    for row, stored in rows.items():
        table["image"][row] = None if stored is None else {"bytes": stored, "path": None}
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Refusals happen before any model loads: loading one fails the test."""
    from forgetbench.train import recipe

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for an input that should have been refused")

    monkeypatch.setattr(recipe, "load_model", refuse)


def refused(capfd, argv: list[str], tmp_path: Path, kind: str, case: str, method: str = "lora") -> str:
    """Run a recipe in-process on ``argv`` (its output folder ``tmp_path/out``); assert the refusal's shape:
    exit 2, one stderr line, no traceback, no new file. Returns the message (after ``error: ``)."""
    from forgetbench.train import recipe_main

    capfd.readouterr()
    before = files_under(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(method, [*argv, *([] if "--output_dir" in argv else ["--output_dir", str(tmp_path / "out")])])
    err = capfd.readouterr().err
    partial = sorted(files_under(tmp_path) - before)
    lines = record(kind, case, "refused", err, partial)
    assert exit_info.value.code == 2
    assert TRACEBACK not in err and len(lines) == 1, err
    assert not partial, partial
    prefix = f"recipes/{method}.py: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


# -- images in training rows -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in IMAGE_KINDS if k.outcome == "refused"], ids=lambda k: k.name)
def test_training_refuses_an_unreadable_image_in_one_line(kind, tmp_path, capfd, no_model_load):
    data = pathvqa_with(tmp_path / "train.parquet", 8, {3: kind.stored()})
    message = refused(capfd, [*QUICK, "--dataset_name", "forgetbench_pathvqa", "--data_files", str(data)], tmp_path,
                      "image/training", kind.name)
    assert message.startswith("--dataset_name forgetbench_pathvqa: 1 of 8 rows of split train has an unreadable "
                              "image (row 3: "), message
    assert kind.expect in message and message.endswith("; pass --skip_bad_rows to train without them")


@pytest.mark.parametrize("kind", CONVERTIBLE, ids=lambda k: k.name)
def test_training_converts_an_unusual_image_to_rgb_as_evaluation_does(kind, tmp_path, capfd):
    from forgetbench import suite
    from forgetbench.train.data import load_sft_dataset

    data = pathvqa_with(tmp_path / "train.parquet", 8, {3: kind.stored()})
    rows = load_sft_dataset("forgetbench_pathvqa", "train", data_files=str(data))
    err = capfd.readouterr().err
    record("image/training", kind.name, "converted", "", [])
    assert TRACEBACK not in err and len(rows) == 8
    trained = rows[3]["images"][0]
    evaluated = suite.pathvqa.doc_to_visual(suite.load_split("forgetbench_pathvqa", "train", str(data))[3])[0]
    assert trained.mode == evaluated.mode == "RGB" and trained.getpixel((0, 0)) == kind.expect
    assert trained.tobytes() == evaluated.tobytes()  # training and evaluation convert identically


def test_every_convertible_kind_trains_in_one_run(tmp_path, capfd):
    from forgetbench.train import recipe_main

    data = pathvqa_with(tmp_path / "train.parquet", len(CONVERTIBLE) + 2,
                        {i: kind.stored() for i, kind in enumerate(CONVERTIBLE)})
    recipe_main("lora", [*QUICK, "--max_steps", "2", "--dataset_name", "forgetbench_pathvqa", "--data_files",
                         str(data), "--output_dir", str(tmp_path / "out")])
    err = capfd.readouterr().err
    record("image/training", "all convertible kinds, trained", "converted", "", [])
    manifest = json.loads((tmp_path / "out" / "forgetbench_manifest.json").read_text())
    assert TRACEBACK not in err and manifest["steps"] == 2
    assert manifest["data"]["rows"] == len(CONVERTIBLE) + 2 and manifest["skipped_rows"] is None


@pytest.mark.slow
@pytest.mark.parametrize("kind", CONVERTIBLE, ids=lambda k: k.name)
def test_each_convertible_kind_trains_on_its_own(kind, tmp_path, capfd):
    from forgetbench.train import recipe_main

    data = pathvqa_with(tmp_path / "train.parquet", 8, dict.fromkeys(range(8), kind.stored()))
    recipe_main("lora", [*QUICK, "--max_steps", "2", "--dataset_name", "forgetbench_pathvqa", "--data_files",
                         str(data), "--output_dir", str(tmp_path / "out")])
    err = capfd.readouterr().err
    record("image/training (slow)", kind.name, "converted", "", [])
    assert TRACEBACK not in err
    assert json.loads((tmp_path / "out" / "forgetbench_manifest.json").read_text())["steps"] == 2


def issue_split(tmp_path: Path) -> Path:
    """The issue's case: the PathVQA fixture's train split of 40 rows with 3 corrupt images."""
    return pathvqa_with(tmp_path / "bad.parquet", 40, dict.fromkeys((4, 17, 31), b"\x89PNG not really"))


def test_issue_case_a_three_corrupt_images_of_forty(tmp_path, capfd, no_model_load):
    message = refused(capfd, [*QUICK, "--dataset_name", "forgetbench_pathvqa", "--data_files",
                              str(issue_split(tmp_path))], tmp_path, "image/training", "issue (a): 3 of 40 corrupt")
    assert message == ("--dataset_name forgetbench_pathvqa: 3 of 40 rows of split train have unreadable images "
                       "(rows 4, 17, 31: cannot identify image file); pass --skip_bad_rows to train without them")


def test_issue_case_a_with_skip_bad_rows_trains_and_the_manifest_and_report_say_so(tmp_path, capfd):
    from jinja2 import Environment, PackageLoader

    from forgetbench.train import recipe_main

    out = tmp_path / "out"
    recipe_main("lora", [*QUICK, "--max_steps", "2", "--model_name_or_path", "forgetbench-lab", "--dataset_name",
                         "forgetbench_pathvqa", "--data_files", str(issue_split(tmp_path)), "--skip_bad_rows",
                         "--output_dir", str(out)])
    record("image/training", "issue (a) with --skip_bad_rows, trained", "converted", "", [])
    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    assert manifest["skipped_rows"] == {"count": 3, "ids": [4, 17, 31], "id_column": "row index",
                                        "reason": "cannot identify image file"}
    assert manifest["data"]["rows"] == 37 and manifest["steps"] == 2 and manifest["trust_remote_code"] is False
    # The study's report shows the count in its provenance table.
    html = Environment(loader=PackageLoader("forgetbench.study", "templates"), autoescape=True) \
        .get_template("report.html.j2").render(
            plan={"model": "forgetbench-lab", "downstream": [], "upstream": [], "limit": None},
            arms={"lora": {"tuned_elsewhere": False, "train_dataset_note": None}}, notes={},
            manifests={"lora": manifest}, steps={}, versions={})
    assert "3 training rows left out (--skip_bad_rows): cannot identify image file; row index 4, 17, 31" in html


def test_an_id_column_names_the_rows(tmp_path, capfd, no_model_load):
    """IconQA rows carry ``question_id``; a broken choice image is found as well as the question's."""
    import datasets

    table = datasets.Dataset.from_parquet(str(fixtures.iconqa(tmp_path / "src", "train"))) \
        .cast_column("choice_image_1", datasets.Image(decode=False)).to_dict()
    table["choice_image_1"][1] = {"bytes": b"garbage", "path": None}  # doc 1 is choose_img with 3 options
    broken = tmp_path / "iconqa.parquet"
    datasets.Dataset.from_dict(table).cast_column("choice_image_1", datasets.Image()).to_parquet(str(broken))
    message = refused(capfd, [*QUICK, "--dataset_name", "forgetbench_iconqa", "--data_files", str(broken)],
                      tmp_path, "image/training", "id column (IconQA question_id, a choice image)")
    assert "1 of 6 rows of split train has an unreadable image (question_id 1001: cannot identify image file)" \
        in message


def test_a_dataset_in_trl_format_is_checked_too(tmp_path, capfd, no_model_load):
    import datasets

    images = [[fixtures.image(i)] for i in range(4)]
    rows = {"images": images, "messages": [[{"role": "user", "content": [{"type": "image"},
                                                                        {"type": "text", "text": "Q?"}]},
                                            {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]] * 4}
    folder = tmp_path / "trl"
    dataset = datasets.Dataset.from_dict(rows).cast_column("images", datasets.List(datasets.Image(decode=False)))
    table = dataset.to_dict()
    table["images"][2] = [{"bytes": b"", "path": None}]
    datasets.Dataset.from_dict(table, features=dataset.features).cast_column(
        "images", datasets.List(datasets.Image())).save_to_disk(str(folder))
    message = refused(capfd, [*QUICK, "--dataset_name", str(folder)], tmp_path, "image/training",
                      "TRL-format folder (save_to_disk)")
    assert message == (f"--dataset_name {folder}: 1 of 4 rows of split train has an unreadable image (row 2: empty "
                       "image bytes); pass --skip_bad_rows to train without them")


# -- images in evaluation documents ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrapper(lab_model, tmp_path_factory):
    from forgetbench.evaluate.model import ImageTextModel

    return ImageTextModel(pretrained=str(lab_model), batch_size=4,
                          unscorable_dir=str(tmp_path_factory.mktemp("eval")))


def _evaluate_docs(wrapper, task: str, docs, doc_to_visual):
    from lmms_eval.api.instance import Instance

    wrapper.task_dict = {task: {"test": docs}}
    meta = {"task": task, "repeats": 1}
    generate = [Instance("generate_until", ("What does this image show?", {"max_new_tokens": 2}, doc_to_visual, d,
                                            task, "test"), d, {**meta, "doc_id": d}) for d in range(len(docs))]
    choose = [Instance("loglikelihood", ("Is it red?", choice, doc_to_visual, d, task, "test"), 2 * d + i,
                       {**meta, "doc_id": d}) for d in range(len(docs)) for i, choice in enumerate((" yes", " no"))]
    return wrapper.generate_until(generate), [r.text for r in wrapper.loglikelihood(choose)]


@pytest.mark.parametrize("kind", IMAGE_KINDS, ids=lambda k: k.name)
def test_evaluation_answers_an_unreadable_document_without_scoring_it_and_counts_it(kind, wrapper, tmp_path, capfd,
                                                                                   caplog, monkeypatch):
    """lmms-eval reads each document through datasets (which decodes its image) and the task's doc_to_visual
    (which converts it with rgb): a broken image is one unscorable item, never a crash, never a dropped one."""
    import datasets

    from forgetbench.suite import pathvqa

    docs = datasets.Dataset.from_parquet(str(pathvqa_with(tmp_path / "test.parquet", 4, {1: kind.stored()})))
    task = f"faults_{kind.name}"
    caplog.clear()
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as in any lmms-eval process: the wrapper resets it
    answers, scores = _evaluate_docs(wrapper, task, docs, pathvqa.doc_to_visual)
    err = capfd.readouterr().err
    warned = [r.getMessage() for r in caplog.records if r.name == "forgetbench.evaluate.model"]
    listed = json.loads(wrapper.unscorable_file.read_text())["items"]
    mine = [item for item in listed if item["task"] == task]
    record("image/evaluation", kind.name, "unscored" if kind.outcome == "refused" else "converted",
           "\n".join(warned))
    assert TRACEBACK not in err and len(answers) == 4 and len(scores) == 8
    assert all(math.isfinite(nll) for nll, _ in scores[:2] + scores[4:])  # the readable documents are scored
    if kind.outcome == "converted":
        assert not mine and not warned and math.isfinite(scores[2][0])
        return
    assert answers[1] == "" and scores[2] == scores[3] == (math.inf, False)
    # Why, in one line: the task's own words (suite.images) or the decoder's (datasets decodes before the task).
    assert mine == [{"task": task, "split": "test", "doc_id": 1, "reason": mine[0]["reason"]}]
    assert mine[0]["reason"] and "\n" not in mine[0]["reason"]
    assert len(warned) == 1 and f"task {task} doc 1: its image cannot be read" in warned[0]


def test_evaluation_answers_a_zero_size_image_from_any_task_hook_without_scoring_it(wrapper, caplog):
    """lmms-eval's own tasks convert images themselves: a 0x0 image reaching the wrapper is caught there too."""
    from PIL import Image

    from forgetbench.lab import data

    docs = data.load("shape", "test").select(range(2))
    answers, scores = _evaluate_docs(wrapper, "faults_zero_size_hook", docs,
                                     lambda doc: [Image.new("RGB", (0, 0))])
    record("image/evaluation", "zero-size 0x0 from another task's hook", "unscored",
           "\n".join(r.getMessage() for r in caplog.records if r.name == "forgetbench.evaluate.model"))
    assert answers == ["", ""] and all(s == (math.inf, False) for s in scores)
    assert wrapper.unscorable[("faults_zero_size_hook", "test", 0)] == "ValueError: zero-size image (0x0)"


@pytest.mark.slow
def test_the_lmms_eval_cli_on_broken_documents_exits_0_writes_results_and_compare_counts_them(tmp_path):
    """The real ``lmms-eval`` command on a local PathVQA copy with 3 broken images of 8: results are written, the
    side file lists the 3, and compare reports them per task."""
    from forgetbench.checkpoint import lab_base_model_path
    from forgetbench.compare import compare_runs

    broken = pathvqa_with(tmp_path / "data" / "test.parquet", 8, {1: b"junk", 4: None, 6: b""})
    fixtures.local_yaml(tmp_path, "forgetbench_pathvqa", {"test": broken})
    task = "forgetbench_pathvqa_local"
    outs = []
    for name in ("pre", "post"):
        out = tmp_path / name
        command = [str(BIN / "lmms-eval"), "--model", "forgetbench", "--model_args",
                   f"pretrained={lab_base_model_path()}", "--tasks", f"{task},forgetbench_lab_color",
                   "--include_path", str(tmp_path), "--limit", "8", "--batch_size", "4", "--log_samples",
                   "--output_path", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600, check=False)
        assert done.returncode == 0 and TRACEBACK not in done.stderr, done.stderr[-3000:]
        outs.append(out)
    listed = json.loads((outs[0] / "unscorable.json").read_text())
    assert listed["counts"] == {task: 3} and [i["doc_id"] for i in listed["items"]] == [1, 4, 6]
    comparison = compare_runs(outs[0], [("post", outs[1])], [task], ["forgetbench_lab_color"])
    assert comparison.report["tasks"][task]["unscorable"] == {"pre": 3, "post": 3}
    assert comparison.report["tasks"]["forgetbench_lab_color"]["unscorable"] == {"pre": 0, "post": 0}
    record("image/evaluation (slow)", "lmms-eval CLI, 3 broken of 8", "unscored", "", [])


def test_compare_reports_unscorable_counts_per_task(tmp_path):
    from test_compare import DOWN, POST, PRE, UP, lmms_results, write_output

    from forgetbench.compare import compare_runs

    pre = write_output(tmp_path / "pre", lmms_results(PRE))
    post = write_output(tmp_path / "post", lmms_results(POST))
    (post / "unscorable.json").write_text(json.dumps({"items": [{"task": "chartqa", "split": "test", "doc_id": 3,
                                                                  "reason": "no image"}]}))
    rows = compare_runs(pre, [("post", post)], DOWN.split(","), UP.split(",")).report["tasks"]
    assert rows["chartqa"]["unscorable"] == {"pre": 0, "post": 1} and rows["pope"]["unscorable"] == {"pre": 0,
                                                                                                       "post": 0}
    (post / "unscorable.json").unlink()
    rows = compare_runs(pre, [("post", post)], DOWN.split(","), UP.split(",")).report["tasks"]
    assert rows["chartqa"]["unscorable"] is None  # neither run was scored by --model forgetbench
    record("image/evaluation", "compare pairs the unscorable counts", "checked", "", [])


# -- configs and flags -------------------------------------------------------------------------------------------


def _yaml(tmp_path: Path, text: str, base: bool = True) -> Path:
    path = tmp_path / "cfg" / "recipe.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text((LAB_CONFIG.read_text() if base else "") + text)
    return path


CONFIG_CASES = {
    # name: (extra argv or a config text to append, expected message)
    "issue (b): unknown key in the config": ({"yaml": "nosuch_key: 3\n"},
                                             "--config {cfg}: unknown key nosuch_key: not an option of this recipe "
                                             "(see --help)"),
    "misspelt key, with a suggestion": ({"yaml": "learning_rat: 0.1\n"}, "unknown key learning_rat (did you mean "
                                        "learning_rate?)"),
    "config value of the wrong type": ({"yaml": "learning_rate: [1, 2]\n"}, "--config {cfg}: learning_rate: [1, 2] "
                                       "is not a number"),
    "config string not a number": ({"yaml": "max_steps: many\n"}, "--config {cfg}: max_steps: 'many' is not an "
                                   "integer"),
    "config boolean not a boolean": ({"yaml": "bf16: maybe\n"}, "--config {cfg}: bf16: 'maybe' is not true or false"),
    "config value outside the choices": ({"yaml": "lr_scheduler_type: cosnie\n"},
                                         "lr_scheduler_type: 'cosnie' is not one of linear, cosine"),
    "config not valid YAML": ({"yaml": "a: [\n", "base": False}, "--config {cfg}: not valid YAML"),
    "config not a mapping": ({"yaml": "- a\n- b\n", "base": False}, "--config {cfg}: not a YAML mapping"),
    "config file missing": ({"argv": ["--config", "{tmp}/nosuch.yaml"]},
                            "--config {tmp}/nosuch.yaml: cannot read (No such file or directory)"),
    "unknown command-line option": ({"argv": ["--nosuch", "1"]}, "unrecognized arguments: --nosuch 1 (see --help)"),
    "command-line value of the wrong type": ({"argv": ["--learning_rate", "abc"]},
                                             "argument --learning_rate/--learning-rate: invalid float value: 'abc'"),
    "negative learning rate": ({"argv": ["--learning_rate", "-1"]}, "--learning_rate -1.0: must be a finite number "
                               ">= 0"),
    "batch size 0": ({"argv": ["--per_device_train_batch_size", "0"]}, "--per_device_train_batch_size 0: must be at "
                     "least 1"),
    "negative seed": ({"argv": ["--seed", "-1"]}, "--seed -1: must be in [0, 2**32)"),
    "max_steps 0": ({"argv": ["--max_steps", "0"]}, "--max_steps 0: must be a positive number of steps"),
    "lora_dropout above 1": ({"argv": ["--lora_dropout", "1.5"]}, "--lora_dropout 1.5: must be in [0, 1)"),
    "max_train_samples 0": ({"argv": ["--max_train_samples", "0"]}, "--max_train_samples 0: must be at least 1"),
    "replay_ratio above 1": ({"argv": ["--replay_tasks", "forgetbench_lab_color", "--replay_ratio", "2"]},
                             "--replay_ratio 2.0: must be between 0 and 1"),
    "top_k above the layer count": ({"argv": ["--top_k", "99"], "method": "top_layers"},
                                    "--top_k 99: must be between 1 and the model's 4 decoder layers"),
    "architecture without a parts map": ({"argv": ["--model_name_or_path", "{tmp}/foreign"], "model": "foreign"},
                                         "architecture FooForConditionalGeneration has no forgetbench architecture "
                                         "map"),
    "no such model folder": ({"argv": ["--model_name_or_path", "{tmp}/nosuch-model"]}, "cannot load"),
    "unknown dataset": ({"argv": ["--dataset_name", "forgetbench_lab_nosuch"]},
                        "--dataset_name forgetbench_lab_nosuch: cannot load"),
    "data_files for a task that takes none": ({"argv": ["--data_files", "{tmp}/x.parquet"]},
                                              "--data_files is for forgetbench suite tasks"),
    "another recipe's method": ({"argv": ["--method", "ia3"]}, "--method ia3 names another method; run recipes/ia3.py"),
    "resume with nothing to resume": ({"argv": ["--resume_from_checkpoint", "last"]}, "no complete checkpoint in"),
}


def _model_folder(tmp_path: Path, kind: str) -> Path:
    """A model folder holding only a config (and, for ``pickled``, a .bin): enough for AutoConfig."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    folder = tmp_path / kind
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2)
    name = "FooForConditionalGeneration" if kind == "foreign" else "LlavaForConditionalGeneration"
    LlavaConfig(vision_config=vision, text_config=text, architectures=[name]).save_pretrained(folder)
    if kind == "pickled":
        (folder / "pytorch_model.bin").write_bytes(b"a pickle")
    return folder


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_a_config_or_flag_fault_is_refused_in_one_line_before_any_model_loads(case, tmp_path, capfd, no_model_load):
    spec, expected = CONFIG_CASES[case]
    if "model" in spec:
        _model_folder(tmp_path, spec["model"])
    argv = list(QUICK)
    cfg = None
    if "yaml" in spec:
        cfg = _yaml(tmp_path, spec["yaml"], spec.get("base", True))
        argv[1] = str(cfg)
    argv += [a.format(tmp=tmp_path) for a in spec.get("argv", [])]
    if argv.count("--config") == 2:
        del argv[0:2]
    message = refused(capfd, argv, tmp_path, "config", case, spec.get("method", "lora"))
    assert expected.format(cfg=cfg, tmp=tmp_path) in message, message
    assert not (tmp_path / "out").exists()


@pytest.mark.heavy
def test_issue_case_c_accelerate_launch_quiet_adds_no_traceback(tmp_path):
    """The documented launch, ``accelerate launch -q``: the recipe's one line, no CalledProcessError traceback
    (accelerate's own notice about its defaults, when no accelerate config exists, is accelerate's)."""
    out = tmp_path / "out"
    done = subprocess.run([str(BIN / "accelerate"), "launch", "-q", "recipes/lora.py", "--config",
                           "recipes/configs/lab/lora.yaml", "--learning_rate", "-1", "--output_dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300, check=False)
    ours = [line for line in done.stderr.splitlines() if line.startswith("recipes/")]
    accelerates = ("The following values were not passed", "\t`--", "To avoid this warning")
    others = [line for line in done.stderr.splitlines() if line.strip() and line not in ours
              and not line.startswith(accelerates)]
    record("config", "issue (c): accelerate launch -q, a recipe error", "refused", "\n".join(ours + others),
           [str(out)] if out.exists() else [])
    assert done.returncode == 1  # accelerate's status for a failed script under --quiet
    assert ours == ["recipes/lora.py: error: --learning_rate -1.0: must be a finite number >= 0"]
    assert not others and TRACEBACK not in done.stderr and not out.exists(), done.stderr


# -- outputs: disk full, failed renames, at a chosen file ---------------------------------------------------------


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_while_saving_the_checkpoint_keeps_the_previous_one_and_names_the_file(tmp_path, capfd,
                                                                                          monkeypatch):
    import transformers.modeling_utils as modeling

    from forgetbench.train import recipe_main

    out = tmp_path / "out"
    out.mkdir()
    previous = {"model.safetensors": b"previous weights", "forgetbench_manifest.json": b'{"previous": true}'}
    for name, data in previous.items():
        (out / name).write_bytes(data)

    def full(state, filename, *args, **kwargs):
        raise enospc(filename)

    monkeypatch.setattr(modeling, "safe_save_file", full)
    with pytest.raises(SystemExit) as exit_info:
        recipe_main("lora", [*QUICK, "--output_dir", str(out)])
    err = capfd.readouterr().err
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    lines = record("output", "disk full writing model.safetensors (recipe)", "refused", err.splitlines()[-1], left)
    assert exit_info.value.code == 2 and TRACEBACK not in err and len(lines) == 1
    assert lines[0] == (f"recipes/lora.py: error: --output_dir {out}: cannot write model.safetensors (No space left "
                        "on device); the checkpoint was not saved and what the folder held is unchanged")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == previous and not left


def test_a_failed_rename_in_a_report_set_leaves_the_previous_files_and_names_the_file(tmp_path, monkeypatch):
    from forgetbench import outputs

    files = {tmp_path / name: f"new {name}".encode() for name in ("a.json", "b.md", "c.csv")}
    for path in files:
        path.write_bytes(b"previous")
    real = os.replace

    def failing(src, dst):
        if Path(dst).name == "b.md":
            raise enospc(dst)
        real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", failing)
    with pytest.raises(OSError) as info:
        outputs.write_all_atomic(files)
    record("output", "failed rename of the 2nd of 3 report files", "refused", "", [])
    assert info.value.filename == str(tmp_path / "b.md") and info.value.errno == errno.ENOSPC
    # a.json was renamed into place, then removed again: never a partial set; nothing temporary is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.md", "c.csv"]
    assert all((tmp_path / n).read_bytes() == b"previous" for n in ("b.md", "c.csv"))


def test_a_full_disk_while_writing_study_state_keeps_the_last_state_and_the_study_says_which_file(tmp_path, capsys,
                                                                                                 monkeypatch):
    import argparse

    from forgetbench import outputs, study

    state = study.State(tmp_path, study.Plan("forgetbench-lab", ("a",), ("b",), ()))
    state.finish("baseline", seconds=1.0)
    kept = state.file.read_bytes()

    def full(fd):
        raise enospc(f"/proc/self/fd/{fd}")

    monkeypatch.setattr(outputs.os, "fsync", full)
    with pytest.raises(OSError) as info:
        state.finish("train/lora", seconds=2.0)
    assert info.value.filename == str(state.file) and state.file.read_bytes() == kept
    assert [p.name for p in tmp_path.iterdir()] == ["study.json"]
    monkeypatch.setattr(study, "study", lambda args: state.finish("train/lora", seconds=2.0))
    assert study.run(argparse.Namespace()) == 2
    err = capsys.readouterr().err
    lines = record("output", "disk full writing study.json (study)", "refused", err, [])
    assert lines == [f"forgetbench study: error: {state.file}: No space left on device (the steps finished so far "
                     "are kept; rerun to continue)"]


def test_a_failed_move_never_leaves_an_old_manifest_beside_new_weights(tmp_path, monkeypatch):
    from forgetbench import checkpoint

    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old")
    (out / checkpoint.MANIFEST_NAME).write_bytes(b"{}")
    real = os.replace

    def failing(src, dst):
        if Path(dst).name == "processor_config.json":
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        real(src, dst)

    def write(staging: Path) -> None:
        for name in ("model.safetensors", "processor_config.json", checkpoint.MANIFEST_NAME):
            (staging / name).write_bytes(b"new")

    monkeypatch.setattr(checkpoint.os, "replace", failing)
    with pytest.raises(OSError):
        checkpoint.write_model_folder(out, write)
    record("output", "failed move inside a checkpoint folder", "refused", "", [])
    assert checkpoint.read_manifest(out) is None  # not a finished checkpoint
    assert not (tmp_path / ".ckpt.saving").exists()


def test_a_full_disk_in_the_staging_folder_leaves_the_checkpoint_as_it_was(tmp_path):
    from forgetbench import checkpoint

    out = tmp_path / "ckpt"
    out.mkdir()
    (out / checkpoint.MANIFEST_NAME).write_bytes(b'{"base_model": null}')

    def write(staging: Path) -> None:
        (staging / "model.safetensors").write_bytes(b"half")
        raise enospc(staging / "model.safetensors")

    with pytest.raises(OSError):
        checkpoint.write_model_folder(out, write)
    record("output", "disk full in a checkpoint's staging folder", "refused", "", [])
    assert [p.name for p in out.iterdir()] == [checkpoint.MANIFEST_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_full_disk_writing_unscorable_json_names_it(wrapper, monkeypatch):
    from forgetbench.evaluate import model

    def full(src, dst):
        raise enospc(src)

    monkeypatch.setattr(model.os, "replace", full)
    with pytest.raises(OSError) as info:
        wrapper._write_unscorable()
    record("output", "disk full writing unscorable.json", "refused", "", [])
    assert info.value.filename == str(wrapper.unscorable_file)
    assert not [p for p in wrapper.unscorable_file.parent.iterdir() if p.name.startswith(".")]


# -- safety ------------------------------------------------------------------------------------------------------


def test_a_model_name_with_shell_metacharacters_is_data(tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "recipes/lora.py", "--config", str(LAB_CONFIG), "--model_name_or_path",
                           f"x; rm -rf {canary}", "--output_dir", str(out)], cwd=REPO, capture_output=True,
                          text=True, env=ENV, timeout=300, check=False)
    lines = record("safety", "model name 'x; rm -rf CANARY' (subprocess)", "refused", done.stderr,
                   [str(out)] if out.exists() else [])
    assert done.returncode == 2 and TRACEBACK not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"recipes/lora.py: error: --model_name_or_path x; rm -rf {canary}: cannot load (")
    assert canary.is_dir() and not out.exists()


SAFETY_CASES = {
    "model path with ..": (["--model_name_or_path", "../../../.."], "cannot load"),
    "dataset name with shell metacharacters": (["--dataset_name", "x && touch {tmp}/pwned"], "cannot load"),
    "output_dir with shell metacharacters": (["--output_dir", "{tmp}/o; touch {tmp}/pwned", "--learning_rate", "-1"],
                                             "--learning_rate -1.0"),
    "model shipping its own code, not trusted": (["--model_name_or_path", "{tmp}/remote"],
                                                 "it ships its own Python code, which runs only with "
                                                 "--trust_remote_code true"),
    "pickled .bin weights": (["--model_name_or_path", "{tmp}/pickled"], "its weights are pickled .bin/.pt files; "
                             "forgetbench loads safetensors only"),
}


@pytest.mark.parametrize("case", SAFETY_CASES, ids=list(SAFETY_CASES))
def test_a_hostile_input_is_refused_as_data(case, tmp_path, capfd, no_model_load):
    argv, expected = SAFETY_CASES[case]
    _model_folder(tmp_path, "pickled")
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "custom_vlm", "architectures": ["CustomVLM"],
                                                    "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}))
    (remote / "configuration_custom.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\n")
    message = refused(capfd, [*QUICK, *(a.format(tmp=tmp_path) for a in argv)], tmp_path, "safety", case)
    assert expected.format(tmp=tmp_path) in message and not (tmp_path / "pwned").exists()


def test_the_wrapper_loads_safetensors_only(tmp_path, lab_model):
    from forgetbench.evaluate.model import ImageTextModel

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(b"a pickle")
    with pytest.raises(ValueError, match="has no adapter_model.safetensors"):
        ImageTextModel(pretrained=str(lab_model), adapter=str(adapter))
    import shutil

    import torch

    pickled = tmp_path / "pickled-lab"
    shutil.copytree(lab_model, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        ImageTextModel(pretrained=str(pickled))
    record("safety", "--model forgetbench: pickled adapter and weights", "refused", "", [])


PACKAGE = REPO / "forgetbench"


def _code(pattern: str) -> list[str]:
    return [f"{p.relative_to(REPO)}:{n}" for p in sorted(PACKAGE.rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern in line and not line.strip()
            .startswith("#")]


@pytest.mark.parametrize("pattern", ["shell=True", "os.system(", "os.popen(", "trust_remote_code=True",
                                     "yaml.load(", "pickle.load", "torch.load("])
def test_no_unsafe_call_in_the_package(pattern):
    found = _code(pattern)
    allowed = {"yaml.load(": ["forgetbench/suite/listing.py"]}  # a yaml.SafeLoader subclass (!function as text)
    found = [f for f in found if not any(f.startswith(a) for a in allowed.get(pattern, []))]
    record("safety", f"no {pattern} in forgetbench/", "checked", "", [])
    assert not found, found


def test_every_weight_save_writes_safetensors():
    """transformers 5 always writes safetensors (save_pretrained has no safe_serialization switch left); PEFT's
    save_pretrained defaults to it: no call asks for anything else."""
    import inspect

    from peft import PeftModel
    from transformers import PreTrainedModel

    assert "safe_serialization" not in inspect.signature(PreTrainedModel.save_pretrained).parameters
    assert inspect.signature(PeftModel.save_pretrained).parameters["safe_serialization"].default is True
    assert not _code("safe_serialization=False")
    record("safety", "weights saved as safetensors only", "checked", "", [])


# -- nothing lost, silently wrong, injected (issue 19) -----------------------------------------------------------


def cli_refused(argv: list[str], folder: Path, kind: str, case: str, prog: str, cwd: Path | None = None) -> str:
    """``forgetbench ARGV`` as a user runs it: exit 2, one stderr line starting ``PROG: error:``, no traceback, and
    every file under ``folder`` as it was (the same names and bytes)."""
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    done = subprocess.run([str(BIN / "forgetbench"), *argv], capture_output=True, text=True, env=ENV, timeout=300,
                          cwd=cwd or folder, check=False)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    changed = sorted(str(p) for p in set(before) ^ set(after) | {p for p in before if after.get(p) != before[p]})
    lines = record(kind, case, "refused", done.stderr, changed)
    assert done.returncode == 2 and TRACEBACK not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert not changed, changed
    return lines[0]


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """A folder of a user's own files, one of them in a sub-folder and one named like a study output."""
    folder = tmp_path / "my-project"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "plan.txt").write_text("my plan\n")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    (folder / "report.html").write_text("<p>my own report</p>\n")
    return folder


def test_study_overwrite_of_a_folder_of_user_files_is_refused_and_every_file_stays(user_folder):
    cli_refused(["study", "--out", str(user_folder), "--overwrite"], user_folder.parent, "nothing lost",
                "study --out FOLDER --overwrite on user files", "forgetbench study")


def test_make_study_into_a_folder_of_user_files_is_refused_and_every_file_stays(user_folder):
    """`make study OUT=FOLDER` (README's main job) on a folder of user files: the venv is the one running the tests,
    taken as up to date (-o), so make runs nothing but the study command."""
    venv = Path(sys.executable).parent.parent
    before = {p: p.read_bytes() for p in user_folder.rglob("*") if p.is_file()}
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-o", f"{venv}/.ready", "study",
                           f"OUT={user_folder}", f"VENV={venv}"], capture_output=True, text=True, env=ENV,
                          timeout=300, check=False)
    lines = record("nothing lost", "make study OUT=FOLDER on user files", "refused",
                   "\n".join(line for line in done.stderr.splitlines() if not line.startswith("make")), [])
    assert done.returncode != 0 and TRACEBACK not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("forgetbench study: error: "), done.stderr[-2000:]
    assert {p: p.read_bytes() for p in user_folder.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("name", ["..", "."])
def test_an_arm_named_like_a_parent_folder_is_refused_before_anything_runs(name, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(f"arms:\n  '{name}': {{recipe: lora}}\n")
    cli_refused(["study", "--out", str(tmp_path / "out"), "--config", str(config)], tmp_path, "nothing lost",
                f"an arm named {name!r}", "forgetbench study")
    assert not (tmp_path / "out").exists()


def test_compare_json_over_the_post_runs_results_is_refused(tmp_path):
    from test_compare import DOWN, POST, PRE, UP, lmms_results, write_output

    pre, post = write_output(tmp_path / "pre", lmms_results(PRE)), write_output(tmp_path / "post", lmms_results(POST))
    (results,) = post.glob("*/*_results.json")
    cli_refused(["compare", "--pre", str(pre), "--post", str(post), "--downstream", DOWN, "--upstream", UP, "--json",
                 str(results)], tmp_path, "nothing lost", "compare --json onto the post run's results.json",
                "forgetbench compare")


def test_a_replay_ratio_that_would_grow_the_stream_without_bound_is_refused(tmp_path, capfd, no_model_load):
    message = refused(capfd, [*QUICK, "--replay_tasks", "forgetbench_lab_color", "--replay_ratio", "0.999999"],
                      tmp_path, "nothing lost", "--replay_ratio 0.999999")
    assert "--replay_ratio" in message


def test_a_scale_that_contradicts_the_metric_is_refused(tmp_path):
    from test_compare import DOWN, POST, PRE, UP, lmms_results, write_output

    pre, post = write_output(tmp_path / "pre", lmms_results(PRE)), write_output(tmp_path / "post", lmms_results(POST))
    task = DOWN.split(",")[0]
    line = cli_refused(["compare", "--pre", str(pre), "--post", str(post), "--downstream", DOWN, "--upstream", UP,
                        "--metric-scale", f"{task}=points"], tmp_path, "silently wrong",
                       "--metric-scale points on a 0-1 metric", "forgetbench compare")
    assert "--metric-scale" in line


@pytest.mark.parametrize(("argv", "case"), [
    (["--resamples", "1"], "--resamples 1 (a zero-width interval)"),
    (["--seed", "-1"], "--seed -1 (numpy's traceback)"),
])
def test_bootstrap_settings_that_would_mislead_are_refused(argv, case, tmp_path):
    from test_compare import DOWN, POST, PRE, UP, lmms_results, write_output

    pre, post = write_output(tmp_path / "pre", lmms_results(PRE)), write_output(tmp_path / "post", lmms_results(POST))
    cli_refused(["compare", "--pre", str(pre), "--post", str(post), "--downstream", DOWN, "--upstream", UP, *argv],
                tmp_path, "silently wrong", case, "forgetbench compare")


def test_a_limit_below_one_is_refused(tmp_path):
    cli_refused(["study", "--out", str(tmp_path / "out"), "--limit", "-1"], tmp_path, "silently wrong",
                "study --limit -1", "forgetbench study")


def test_formula_answers_reach_the_csv_as_text(tmp_path):
    """An answer such as =HYPERLINK(...) would run when forgotten.csv is opened in a spreadsheet."""
    import csv

    from test_compare import DOWN, POST, PRE, UP, lmms_results, write_output

    from forgetbench.compare import compare_runs

    pre, post = write_output(tmp_path / "pre", lmms_results(PRE)), write_output(tmp_path / "post", lmms_results(POST))
    for sample_file in [*pre.glob("*/*_samples_*.jsonl"), *post.glob("*/*_samples_*.jsonl")]:
        rows = [json.loads(line) for line in sample_file.read_text().splitlines()]
        for row in rows:
            row["filtered_resps"] = '=HYPERLINK("http://x.invalid","y")'
            row["target"] = "@SUM(A1)"
        sample_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    compare_runs(pre, [("post", post)], DOWN.split(","), UP.split(",")).write(out=out)
    cells = [cell for path in out.glob("*.csv") for row in csv.reader(path.open()) for cell in row]
    assert cells and not [cell for cell in cells if cell[:1] in ("=", "+", "@")]
    assert any(cell.startswith("'=HYPERLINK") for cell in cells)  # kept as text, quoted
    record("injected", "formula answers in the CSVs", "checked", "", [])


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C in the middle of a study: 'interrupted; rerun to continue', exit 130, no traceback."""
    import signal
    import time

    out = tmp_path / "study"
    # A shell that starts a job in the background (`make test &`) makes it ignore SIGINT, and children inherit
    # that: the study gets Ctrl-C's default meaning back, as in a terminal.
    process = subprocess.Popen([str(BIN / "forgetbench"), "study", "--out", str(out), "--methods", "lora", "--limit",
                                "2", "--cache-dir", str(tmp_path / "cache")], cwd=tmp_path, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while process.poll() is None and not (out / "logs").is_dir() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    lines = record("output", "Ctrl-C during a study", "refused", err, [])
    assert process.returncode == 130 and TRACEBACK not in err, err[-2000:]
    assert lines[-1] == "forgetbench study: interrupted; rerun to continue", err[-2000:]


def test_a_truncated_image_stays_unreadable_after_lmms_eval_is_imported(monkeypatch):
    """lmms_eval/api/task.py sets PIL's global LOAD_TRUNCATED_IMAGES on import: in a process that loaded lmms-eval
    (every evaluation, the probe, a test worker) a truncated image would otherwise be padded with grey and scored."""
    import numpy as np
    from PIL import Image, ImageFile

    from forgetbench.suite.images import UnreadableImage, open_image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype="uint8")).save(buffer, "PNG")
    data = buffer.getvalue()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what lmms_eval/api/task.py sets on import
    with pytest.raises(UnreadableImage, match="truncated"):
        open_image(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match="truncated"):  # opened lazily, as datasets hands documents over
        open_image(Image.open(io.BytesIO(data[: len(data) // 2])))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the process's setting is left as it was
    record("image/evaluation", "truncated, with lmms-eval's global set", "checked", "", [])
