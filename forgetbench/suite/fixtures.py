"""Small stand-ins for every suite dataset, with exactly the column names and types of the real copies, and the
local-copy YAMLs that point lmms-eval at them. The tests run the real lmms-eval on these; a user can run
``forgetbench fixtures DIR`` to smoke-test a stack offline, then
``lmms-eval --include_path DIR --tasks forgetbench_pathvqa_local ...``.

The local YAMLs are the documented way to read a local copy (docs/tasks.md): include the shipped task, rename it,
and point ``dataset_path: parquet`` at the files.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import forgetbench
from forgetbench.errors import command_main, emit
from forgetbench.suite import emt, labels, rsvqa

LOCAL_SUFFIX = "_local"


def image(seed: int, size: int = 32):
    """A small deterministic picture: a coloured square on a coloured background.

    >>> image(3).size, image(3).tobytes() == image(3).tobytes(), image(3).tobytes() == image(4).tobytes()
    ((32, 32), True, False)
    """
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    picture = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    corner = rng.randrange(size // 2)
    ImageDraw.Draw(picture).rectangle([corner, corner, corner + size // 3, corner + size // 3],
                                      fill=tuple(rng.randrange(256) for _ in range(3)))
    return picture


def _write(rows: dict, features, path: Path) -> Path:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def pathvqa(folder: Path, split: str, n: int = 8) -> Path:
    from datasets import Features, Image, Value

    qa = [("Is this tissue inflamed?", "yes"), ("What does this image show?", "necrosis"),
          ("Are the cells normal?", "no"), ("Where is the lesion?", "lung"), ("How many nuclei are shown?", "two")]
    rows = {"image": [image(i) for i in range(n)], "question": [qa[i % len(qa)][0] for i in range(n)],
            "answer": [qa[i % len(qa)][1] for i in range(n)]}
    features = Features({"image": Image(), "question": Value("string"), "answer": Value("string")})
    return _write(rows, features, folder / f"{split}.parquet")


def iconqa(folder: Path, split: str) -> Path:
    from datasets import Features, Image, Value

    docs = [
        ("choose_txt", "Which shape is a circle?", "circle,square,triangle", "square", 0),
        ("choose_img", "Which picture shows three dots?", "", "1", 3),
        ("fill_in_blank", "How many stars are there?", "", "5", 0),
        ("choose_txt", "What time is shown?", "3:00,4:00", "4:00", 0),
        ("choose_img", "Which one is different?", "", "0", 2),
        ("fill_in_blank", "What number comes after 9?", "", "10", 0),
    ]
    rows: dict = {"question_id": [], "question": [], "ques_type": [], "choices": [], "answer": [], "query_image": []}
    rows |= {f"choice_image_{i}": [] for i in range(5)}
    for k, (kind, question, choices, answer, n_images) in enumerate(docs):
        rows["question_id"].append(str(1000 + k))
        for key, value in (("question", question), ("ques_type", kind), ("choices", choices), ("answer", answer),
                           ("query_image", image(100 + k))):
            rows[key].append(value)
        for i in range(5):
            rows[f"choice_image_{i}"].append(image(200 + 10 * k + i) if i < n_images else None)
    features = Features({"question_id": Value("string"), "question": Value("string"), "ques_type": Value("string"),
                         "choices": Value("string"), "answer": Value("string"), "query_image": Image()}
                        | {f"choice_image_{i}": Image() for i in range(5)})
    return _write(rows, features, folder / f"{split}.parquet")


def emt_set(key: str, folder: Path, split: str, n: int = 8) -> Path:
    from datasets import ClassLabel, Features, Image

    spec = emt.DATASETS[key]
    # timm/mini-imagenet: assumed to name its classes by WordNet id, in sorted order.
    names = sorted(spec.raw_labels) if key == "miniimagenet" else list(spec.raw_labels)
    columns = {spec.image_column: Image(), spec.label_column: ClassLabel(names=names)}
    rows = {spec.image_column: [image(300 + i) for i in range(n)],
            spec.label_column: [(7 * i) % len(names) for i in range(n)]}
    if key == "cifar100":
        columns["coarse_label"] = ClassLabel(names=list(labels.CIFAR100_COARSE))
        rows["coarse_label"] = [i % len(labels.CIFAR100_COARSE) for i in range(n)]
    return _write(rows, Features(columns), folder / f"{split}.parquet")


def ocrvqa(folder: Path, split: str, n_covers: int = 3) -> Path:
    from datasets import Features, Image, Sequence, Value

    questions = ["Who wrote this book?", "What is the title of this book?", "What is the genre of this book?",
                 "Is this a comedy book?"]
    rows: dict = {key: [] for key in ("image_id", "image", "questions", "answers", "title", "authorName", "genre",
                                      "image_url", "set_name")}
    for k in range(n_covers):
        title, author, genre = f"Book {k}", f"Author {k}", ["Travel", "Cookbooks", "History"][k % 3]
        for key, value in (("image_id", f"00{k}12345"), ("image", image(400 + k)), ("questions", questions),
                           ("answers", [author, title, genre, "No"]), ("title", title), ("authorName", author),
                           ("genre", genre), ("image_url", f"http://example.invalid/{k}.jpg"), ("set_name", split)):
            rows[key].append(value)
    features = Features({"image_id": Value("string"), "image": Image(), "questions": Sequence(Value("string")),
                         "answers": Sequence(Value("string")), "title": Value("string"),
                         "authorName": Value("string"), "genre": Value("string"), "image_url": Value("string"),
                         "set_name": Value("string")})
    return _write(rows, features, folder / f"{split}.parquet")


def rsvqa_release(folder: Path, variant: str) -> Path:
    """A miniature official RSVQA release (JSON files + tif images), to go through the real converter."""
    prefix, types = rsvqa.PREFIX[variant], rsvqa.QUESTION_TYPES[variant]
    answers_by_type = {"presence": ["yes", "no"], "comp": ["no", "yes"], "count": ["3", "0"],
                       "rural_urban": ["rural", "urban"], "area": ["between 10m2 and 100m2", "0m2"]}
    image_dir = folder / rsvqa.IMAGE_FOLDERS[variant][0]
    image_dir.mkdir(parents=True, exist_ok=True)
    for image_id in range(3):
        image(500 + image_id, 64).save(image_dir / f"{image_id}.tif")
    for split in ("train", "test"):
        questions, answers, images = [], [], [{"id": i, "questions_ids": [], "active": True} for i in range(3)]
        for qid in range(2 * len(types)):
            kind = types[qid % len(types)]
            img_id = qid % 3
            text = {"presence": "Is there a road?", "comp": "Are there more buildings than roads?",
                    "count": "How many buildings are there?", "rural_urban": "Is it a rural or an urban area?",
                    "area": "What is the area covered by buildings?"}[kind]
            questions.append({"id": qid, "img_id": img_id, "type": kind, "question": text, "answers_ids": [qid],
                              "active": True})
            answers.append({"id": qid, "question_id": qid, "answer": answers_by_type[kind][qid // len(types)],
                            "active": True})
            images[img_id]["questions_ids"].append(qid)
        questions.append({"id": len(questions), "img_id": 0, "type": types[0], "question": "Inactive question",
                          "answers_ids": [0], "active": False})
        for kind, items in (("questions", questions), ("answers", answers), ("images", images)):
            (folder / f"{prefix}_split_{split}_{kind}.json").write_text(json.dumps({kind: items}))
    return folder


def local_yaml(folder: Path, task: str, files: dict[str, Path]) -> Path:
    """The documented local-copy YAML: include the shipped task, rename it, read parquet files."""
    from forgetbench.suite import task_yaml

    data_files = ", ".join(f"{split}: {path}" for split, path in files.items())
    path = folder / f"{task}{LOCAL_SUFFIX}.yaml"
    path.write_text(f"include: {task_yaml(task)}\ntask: {task}{LOCAL_SUFFIX}\n"
                    f"dataset_path: parquet\ndataset_kwargs: {{data_files: {{{data_files}}}}}\n")
    return path


def write_all(root: Path) -> dict[str, dict[str, Path]]:
    """Every suite task's fixture data under ``root/data`` and its local YAML under ``root``.
    Returns ``{task: {split: parquet file}}``."""
    root, written = Path(root), {}
    data = root / "data"
    for variant in ("lr", "hr"):
        release = rsvqa_release(data / f"rsvqa_{variant}_release", variant)
        files = rsvqa.convert_release(release, variant, data / f"rsvqa_{variant}")
        written[f"forgetbench_rsvqa_{variant}"] = {p.stem: p for p in files}
    for task, make in (("forgetbench_pathvqa", pathvqa), ("forgetbench_iconqa", iconqa),
                       ("forgetbench_ocrvqa", ocrvqa)):
        written[task] = {split: make(data / task, split) for split in ("train", "test")}
    for key in emt.DATASETS:
        files = {split: emt_set(key, data / f"emt_{key}", split) for split in ("train", "test")}
        written[f"forgetbench_emt_{key}"] = written[f"forgetbench_emt_{key}_closed"] = files
    # A task added since (docs/contributing.md) brings its own stand-in: ``fixture(folder, split) -> parquet`` in
    # its hook module, next to its prompt and scorer.
    import importlib

    from forgetbench.suite import TASKS

    for task in TASKS.values():
        module = importlib.import_module(f"forgetbench.suite.{task.module}")
        if task.name not in written and hasattr(module, "fixture"):
            source = TASKS[task.variant_of].name if task.variant_of else task.name
            written[task.name] = written.get(source) or {
                split: module.fixture(data / source, split) for split in ("train", "test")}
    for task, files in written.items():
        local_yaml(root, task, files)
    return written


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("dir", type=Path, help="folder for the fixture data and the local task YAMLs")


def run(args: argparse.Namespace) -> int:
    lines = [f"{task}{LOCAL_SUFFIX}" for task in write_all(args.dir)]
    lines.append(f"lmms-eval --include_path {args.dir} --tasks <one of the above> (tasks: {forgetbench.tasks_path()})")
    return emit("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m forgetbench.suite.fixtures", configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
