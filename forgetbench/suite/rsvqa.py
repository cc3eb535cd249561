"""RSVQA-LR and RSVQA-HR (Lobry et al., 2020): remote-sensing VQA, scored per question type as the papers do.

The official release (Zenodo 6344334 for LR, 6344367 for HR) is a folder of images plus JSON files; no complete hub
copy is known. ``forgetbench convert rsvqa`` converts a release into the parquet files the task YAMLs read:

    forgetbench convert rsvqa --variant lr --release ~/data/RSVQA_LR --out rsvqa_lr

Release layout (LR prefix ``LR``, HR prefix ``USGS``; split ``train``, ``val``, ``test``, HR also ``test_phili``):
``{prefix}_split_{split}_questions.json`` = ``{"questions": [{"id", "img_id", "type", "question", "answers_ids",
"active"}]}``, ``..._answers.json`` = ``{"answers": [{"id", "question_id", "answer", "active"}]}``,
``..._images.json`` = ``{"images": [{"id", "questions_ids", "active"}]}``, and ``Images_LR/{id}.tif`` (HR:
``Data/{id}.tif`` or ``Images_HR/{id}.tif``).

Converted columns: ``question_id`` (int64), ``image_id`` (int64), ``image`` (string: absolute path of the tif, so
that a million HR questions do not copy their 10 659 images), ``question``, ``answer``, ``type`` (strings; type as
in the release: presence, comp, count, rural_urban (LR), area (HR)).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from forgetbench.errors import command_main, emit
from forgetbench.suite import scoring
from forgetbench.suite.common import convert_or_refuse, doc_to_text, doc_to_visual, first, prompt, to_sft_example

__all__ = ["convert_release", "doc_to_text", "doc_to_visual", "prompt", "to_sft_example"]

QUESTION_TYPES = {"lr": ("presence", "comp", "count", "rural_urban"), "hr": ("presence", "comp", "count", "area")}
PREFIX = {"lr": "LR", "hr": "USGS"}
IMAGE_FOLDERS = {"lr": ("Images_LR",), "hr": ("Data", "Images_HR")}
SPLITS = ("train", "val", "test", "test_phili")


# lmms-eval hooks (tasks/rsvqa/): the prompt and images are the shared short-answer ones; the image is a path.


def _scorer(variant: str):
    def process_results(doc: dict, results: list) -> dict:
        """Overall accuracy per question (OA), the same record under AA and each per-type metric, and the image id
        for clustered intervals. Counts compare as numbers ("3", "three", "3." agree).

        >>> out = process_results_lr({"answer": "3", "type": "count", "image_id": "7"}, ["three"])
        >>> out["accuracy"], out["accuracy_count"], out["image_id"]
        (1.0, {'type': 'count', 'value': 1.0}, 7)
        """
        correct = float(scoring.answers_match(first(results), doc["answer"]))
        record = scoring.typed(doc["type"], correct)
        per_type = {f"accuracy_{kind}": record for kind in QUESTION_TYPES[variant]}
        return {"accuracy": correct, "average_accuracy": record, **per_type, "image_id": int(doc["image_id"])}

    process_results.__name__ = f"process_results_{variant}"
    return process_results


process_results_lr = _scorer("lr")
process_results_hr = _scorer("hr")
average_accuracy = scoring.average_accuracy
accuracy_presence = scoring.type_mean("presence")
accuracy_comp = scoring.type_mean("comp")
accuracy_count = scoring.type_mean("count")
accuracy_rural_urban = scoring.type_mean("rural_urban")
accuracy_area = scoring.type_mean("area")


# -- converting the official release ---------------------------------------------------------------------------------


def convert_release(release: Path, variant: str, out: Path) -> list[Path]:
    """Write ``out/{split}.parquet`` for every split of the release found; returns the files written."""
    import datasets

    release, out = Path(release).resolve(), Path(out)
    if variant not in PREFIX:
        raise ValueError(f"--variant {variant!r}: expected one of {', '.join(PREFIX)}")
    image_dir = next((release / name for name in IMAGE_FOLDERS[variant] if (release / name).is_dir()), None)
    if image_dir is None:
        raise FileNotFoundError(f"{release}: no image folder ({' or '.join(IMAGE_FOLDERS[variant])})")
    written = []
    for split in SPLITS:
        stem = release / f"{PREFIX[variant]}_split_{split}"
        if not Path(f"{stem}_questions.json").is_file():
            continue
        rows = _release_rows(stem, image_dir)
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{split}.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(target))
        written.append(target)
    if not written:
        raise FileNotFoundError(f"{release}: no {PREFIX[variant]}_split_*_questions.json")
    return written


def _release_rows(stem: Path, image_dir: Path) -> list[dict]:
    def read(kind: str) -> list[dict]:
        path = Path(f"{stem}_{kind}.json")
        try:
            return json.loads(path.read_text())[kind]
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path}: not an RSVQA {kind} file ({error})") from error

    answers = {a["id"]: a for a in read("answers")}
    images = {i["id"]: i for i in read("images")}
    rows = []
    for q in read("questions"):
        if not q.get("active", True) or not images.get(q["img_id"], {}).get("active", True):
            continue
        answer = answers[q["answers_ids"][0]]["answer"]
        rows.append({"question_id": int(q["id"]), "image_id": int(q["img_id"]),
                     "image": str(image_dir / f"{q['img_id']}.tif"), "question": q["question"],
                     "answer": str(answer), "type": q["type"].lower()})
    return rows


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--variant", choices=sorted(PREFIX), required=True)
    parser.add_argument("--release", type=Path, required=True, help="the unzipped official release")
    parser.add_argument("--out", type=Path, required=True, help="folder for {split}.parquet")


def run(args: argparse.Namespace) -> int:
    """``forgetbench convert rsvqa``: a release that cannot be read is one line naming it."""
    written = convert_or_refuse(args.release, lambda: convert_release(args.release, args.variant, args.out))
    return emit("\n".join(str(path) for path in written))


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m forgetbench.suite.rsvqa", configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
