"""IconQA (Lu et al., 2021): abstract-diagram QA in three sub-tasks, scored per sub-task.

Source: the copy lmms-eval's own ``iconqa`` task reads, ``lmms-lab-encoder/ICON-QA`` (splits val, test), with the
columns its ``utils.py`` uses: ``question_id``, ``question``, ``ques_type`` (choose_txt, choose_img, fill_in_blank),
``choices`` (the options joined by ","), ``answer`` (string), ``query_image`` (Image) and ``choice_image_0`` ..
``choice_image_4`` (Image or null; the options of choose_img).

Unlike lmms-eval's prompt (which offers "The first image." and "The second image." whatever the images), the
choose_img prompt here names every option by its position among the images the model sees: the question image is
the 1st, option A the 2nd, and so on.

lmms-eval's copy holds no train split: ``forgetbench convert iconqa --release iconqa_data --split train
--out iconqa/train.parquet`` converts the official release (https://iconqa.github.io) to these columns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from forgetbench.errors import command_main, emit
from forgetbench.suite import scoring
from forgetbench.suite.common import SHORT_ANSWER, conversation, convert_or_refuse, first, rgb

SUB_TASKS = ("choose_txt", "choose_img", "fill_in_blank")
MAX_CHOICE_IMAGES = 5
ORDINALS = ("1st", "2nd", "3rd", "4th", "5th", "6th")
CHOOSE_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def choice_images(doc: dict) -> list:
    return [doc[key] for i in range(MAX_CHOICE_IMAGES) if (key := f"choice_image_{i}") in doc and doc[key] is not None]


def options(doc: dict) -> list[str]:
    """The options as the prompt shows them (without their letters)."""
    if doc["ques_type"] == "choose_img":
        return [f"the {ORDINALS[i + 1]} image" for i in range(len(choice_images(doc)))]
    if doc["ques_type"] == "choose_txt":
        return [choice.strip() for choice in str(doc["choices"]).split(",")]
    return []


def gold_index(doc: dict) -> int:
    """The correct option: ``answer`` is the option's text, or its 0-based index (as a string).

    >>> gold_index({"ques_type": "choose_txt", "choices": "cat, dog", "answer": "dog"})
    1
    """
    opts = [c.strip() for c in str(doc["choices"]).split(",")] if doc["ques_type"] == "choose_txt" else []
    answer = str(doc["answer"]).strip()
    if answer in opts:
        return opts.index(answer)
    if answer.isdigit() and int(answer) < max(len(opts), len(choice_images(doc))):
        return int(answer)
    raise ValueError(f"IconQA question {doc.get('question_id')}: answer {answer!r} is not one of its options")


def prompt(doc: dict) -> str:
    """The question with lettered options (or the short-answer instruction for fill-in-the-blank).

    >>> print(prompt({"ques_type": "choose_txt", "question": "Which animal? ", "choices": "cat,dog"}))
    Which animal?
    A. cat
    B. dog
    Answer with the option's letter from the given choices directly.
    """
    question = doc["question"].strip()
    if doc["ques_type"] == "fill_in_blank":
        return f"{question}\n{SHORT_ANSWER}"
    letters = scoring.option_letters(len(options(doc)))
    lines = [f"{letter}. {option}" for letter, option in zip(letters, options(doc), strict=True)]
    header = "The 1st image is the question's image; the options are the images after it.\n" if (
        doc["ques_type"] == "choose_img") else ""
    return f"{header}{question}\n" + "\n".join(lines) + f"\n{CHOOSE_INSTRUCTION}"


def target(doc: dict) -> str:
    if doc["ques_type"] == "fill_in_blank":
        return str(doc["answer"]).strip()
    return scoring.OPTION_LETTERS[gold_index(doc)]


def to_sft_example(doc: dict) -> dict:
    return conversation(doc_to_visual(doc), prompt(doc), target(doc))


# lmms-eval hooks (tasks/iconqa/).


def doc_to_visual(doc: dict) -> list:
    """The question image, then every choice image: in choose_img the model must see the options."""
    return [rgb(image) for image in [doc["query_image"], *choice_images(doc)]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return prompt(doc)


def doc_to_target(doc: dict) -> str:
    return target(doc)


def process_results(doc: dict, results: list) -> dict:
    answer = first(results)
    if doc["ques_type"] == "fill_in_blank":
        correct = scoring.answers_match(answer, str(doc["answer"]))
    else:
        correct = scoring.parse_option(answer, options(doc)) == gold_index(doc)
    record = scoring.typed(doc["ques_type"], float(correct))
    return {"accuracy": float(correct), **{f"accuracy_{kind}": record for kind in SUB_TASKS}}


accuracy_choose_txt = scoring.type_mean("choose_txt")
accuracy_choose_img = scoring.type_mean("choose_img")
accuracy_fill_in_blank = scoring.type_mean("fill_in_blank")


# -- converting the official release (for the train split, which lmms-eval's copy does not hold) --------------------


def convert_release(release: Path, split: str, out: Path) -> Path:
    """The official IconQA release (``problems.json``, ``pid_splits.json``,
    ``iconqa/{split}/{ques_type}/{pid}/image.png`` and ``choice_{i}.png``) as one parquet file with the columns
    above (``answer``: the option's text for choose_txt, its index for choose_img, the text for fill_in_blank)."""
    import datasets

    release = Path(release)
    try:
        problems = json.loads((release / "problems.json").read_text())
        pid_splits = json.loads((release / "pid_splits.json").read_text())
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{release}: not an IconQA release ({error})") from error
    features = datasets.Features({"question_id": datasets.Value("string"), "question": datasets.Value("string"),
                                  "ques_type": datasets.Value("string"), "choices": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "query_image": datasets.Image()}
                                 | {f"choice_image_{i}": datasets.Image() for i in range(MAX_CHOICE_IMAGES)})
    rows = []
    for kind in SUB_TASKS:
        for pid in pid_splits.get(f"{kind}_{split}", []):
            problem, folder = problems[pid], release / "iconqa" / split / kind / pid
            choices = [str(c) for c in problem.get("choices") or []]
            answer = problem["answer"]
            if kind == "choose_txt":
                answer = choices[int(answer)]
            images = sorted(folder.glob("choice_*.png"), key=lambda p: int(p.stem.split("_")[1]))
            rows.append({"question_id": str(pid), "question": problem["question"], "ques_type": kind,
                         "choices": ",".join(choices), "answer": str(answer), "query_image": str(folder / "image.png")}
                        | {f"choice_image_{i}": str(images[i]) if i < len(images) else None
                           for i in range(MAX_CHOICE_IMAGES)})
    if not rows:
        raise ValueError(f"{release}: pid_splits.json lists no {split} problem")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Image columns given paths embed the files' bytes in the parquet file.
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(out))
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = "Convert the official IconQA release to parquet."
    parser.add_argument("--release", type=Path, required=True, help="the unzipped iconqa_data folder")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--out", type=Path, required=True, help="the parquet file to write")


def run(args: argparse.Namespace) -> int:
    """``forgetbench convert iconqa``: a release that cannot be read is one line naming it."""
    written = convert_or_refuse(args.release, lambda: convert_release(args.release, args.split, args.out))
    return emit(str(written))


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m forgetbench.suite.iconqa", configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
