"""Your own data as a task: ``forgetbench task add NAME --train FILE --test FILE`` (docs/your-data.md).

Three input formats, told apart row by row:

- **LLaVA**: ``id``, ``image`` (a path), ``conversations``: ``human``/``gpt`` turns, ``<image>`` in a human turn;
  JSON (a list) or JSONL.
- **TRL** (vision SFT): ``images`` (one image) and ``messages`` (``user``/``assistant``, content a string or
  ``[{"type": "image"}, {"type": "text", "text": ...}]``); parquet, JSONL or a ``datasets.save_to_disk`` folder.
- **table**: ``image``, ``question``, ``answer`` (a string, or in JSONL/parquet a list of references), optional
  ``choices`` (a list, or ``|``-separated text) and ``id``; CSV, JSONL or parquet.

:func:`add_task` writes an lmms-eval task folder, ``DIR/NAME/`` with ``NAME.yaml``, ``data/{train,test}.parquet``
(images embedded: the folder is self-contained) and ``forgetbench_task.json`` (the marker: what was written, from
what). Every document has the columns of :data:`FEATURES`. The YAML's ``!function`` hooks are this module's
functions, and training reads the same prompt through :func:`train_conversations`, so the two cannot drift apart.

Multi-turn conversations: every human/gpt (user/assistant) pair is one document asked about the row's image, its id
``<row id>#<k>`` (k = 1, 2, ...; a single pair keeps the row's id). Earlier turns are not shown with later ones.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from forgetbench.errors import ForgetbenchError, command_main, emit, one_line
from forgetbench.suite import scoring
from forgetbench.suite.common import (
    SHORT_ANSWER,
    conversation,
    doc_to_visual,  # noqa: F401 (the task YAMLs' hook, shared with the suite)
    first,
    rgb,
)

DEFAULT_DIR = "forgetbench_tasks"
MARKER = "forgetbench_task.json"
MARKER_KIND = "forgetbench user task"  # the marker's "written_by": what --overwrite trusts
SPLITS = ("train", "test")
METRICS = ("exact_match", "anls", "cider")
CIDER_METRIC = "caption_CIDEr"  # "*_CIDEr": compare's per-image CIDEr (bootstrap intervals) knows the name
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RESERVED_PREFIX = "forgetbench_"  # forgetbench's own task names; lmms-eval's built-in names win on a collision
SHOWN_IDS = 5
WRITE_BATCH = 256  # documents per parquet write: memory stays bounded whatever the dataset's size
IMAGE_TOKEN = "<image>"
SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


class UserTaskError(ForgetbenchError):
    """Bad input for ``task add`` or an unknown user task: one line, nothing written."""


def _features():
    import datasets

    text = datasets.Value("string")
    return datasets.Features({
        "id": text,  # the row's id (or "row N"), "#k" added for the k-th turn of a multi-turn row
        "source_id": text,  # the input row's id
        "turn": datasets.Value("int32"),
        "image": datasets.Image(),  # the file's own bytes, embedded
        "image_hash": text,  # content hash of the decoded pixels: leakage check, clustered intervals
        "question": text,
        "answer": text,  # the training target; the first reference
        "answers": datasets.Sequence(text),  # every reference (exact match: any; ANLS, CIDEr: all)
        "choices": datasets.Sequence(text),  # empty: free generation; else likelihood over them
        "instruction": text,  # appended to the question by prompt()
    })


# -- the one prompt and the scorers (the YAML's hooks; training reads prompt() too) -----------------------------------


def prompt(doc: dict) -> str:
    """The question, the choices when the document has them, then the instruction: asked identically in training
    and evaluation.

    >>> prompt({"question": " What colour? ", "choices": [], "instruction": SHORT_ANSWER})
    'What colour?\\nAnswer the question using a single word or phrase.'
    >>> prompt({"question": "What colour?", "choices": ["red", "blue"], "instruction": ""})
    'What colour?\\nChoices: red, blue.'
    """
    text = str(doc["question"]).strip()
    if doc.get("choices"):
        text += "\nChoices: " + ", ".join(doc["choices"]) + "."
    instruction = doc.get("instruction") or ""
    return f"{text}\n{instruction}" if instruction else text


def to_sft_example(doc: dict) -> dict:
    """One document as TRL's vision-language SFT row (``images`` + ``messages``), answer the first reference."""
    return conversation([doc["image"]], prompt(doc), doc["answer"])


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return prompt(doc)


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"])


def doc_to_target_index(doc: dict) -> int:
    return list(doc["choices"]).index(doc["answer"])


def references(doc: dict) -> list[str]:
    return list(doc.get("answers") or [doc["answer"]])


def process_exact_match(doc: dict, results: list) -> dict:
    """Short-answer match (``scoring.answers_match``) against any reference; the image hash for clustering.

    >>> process_exact_match({"answer": "two", "answers": ["two", "2"], "image_hash": "ab"}, ["2."])
    {'exact_match': 1.0, 'image_hash': 'ab'}
    """
    answer = first(results)
    return {"exact_match": float(any(scoring.answers_match(answer, ref) for ref in references(doc))),
            "image_hash": doc["image_hash"]}


def process_anls(doc: dict, results: list) -> dict:
    """lmms-eval's own ANLS (normalised Levenshtein similarity, 0 below 0.5) against the closest reference.

    >>> process_anls({"answer": "forget", "answers": ["forget"], "image_hash": "ab"}, ["forgot"])["anls"]
    0.8333333333333334
    """
    from lmms_eval.api.metrics import anls

    return {"anls": float(anls(references(doc), [first(results)])["anls"]), "image_hash": doc["image_hash"]}


def process_cider(doc: dict, results: list) -> dict:
    """The caption and its references, as lmms-eval's captioning tasks log them; :func:`cider` scores the corpus."""
    record = {"answer": references(doc), "pred": first(results), "image_id": doc["id"]}
    return {CIDER_METRIC: record, "image_hash": doc["image_hash"]}


def process_choice(doc: dict, results: list) -> dict:
    """Closed set: the choice with the lowest loss wins (forgetbench's model returns ``(loss, is_greedy)`` per
    choice, as lmms-eval's own ``multiple_choice`` scoring reads it).

    >>> process_choice({"answer": "b", "choices": ["a", "b"], "image_hash": "ab"}, [(2.0, False), (0.5, True)])
    {'acc': 1.0, 'image_hash': 'ab'}
    """
    losses = [float(result[0]) for result in results]
    picked = min(range(len(losses)), key=losses.__getitem__)
    return {"acc": float(picked == doc_to_target_index(doc)), "image_hash": doc["image_hash"]}


def cider(records: list[dict]) -> float:
    """CIDEr-D of the logged captions over the evaluated documents: pycocoevalcap's scorer on its PTB tokenizer (Java),
    as lmms-eval's captioning tasks compute it.

    >>> round(cider([{"answer": ["a red car"], "pred": "a red car", "image_id": "1"},
    ...              {"answer": ["a blue bus"], "pred": "a green tree", "image_id": "2"}]), 6)
    3.75
    """
    from pycocoevalcap.cider.cider import Cider

    refs = {i: [{"caption": text} for text in record["answer"]] for i, record in enumerate(records)}
    preds = {i: [{"caption": record["pred"]}] for i, record in enumerate(records)}
    refs, preds = _tokenize(refs), _tokenize(preds)
    return float(Cider().compute_score(refs, preds)[0])


def _tokenize(captions: dict) -> dict:
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        return PTBTokenizer().tokenize(captions)
    except FileNotFoundError:  # no Java: lower-case words without punctuation, near what the PTB tokenizer gives
        return {key: [" ".join(re.findall(r"[\w']+", item["caption"].lower())) for item in items]
                for key, items in captions.items()}


# -- reading the input ------------------------------------------------------------------------------------------------


class _RowProblem(Exception):
    """Why one input row cannot become documents (a short reason, grouped in the refusal)."""


@dataclasses.dataclass
class _Draft:
    question: str
    answers: list[str]
    choices: list[str]


def _records(path: Path, split: str) -> Iterator[tuple[str, object]]:
    """``(name, record)`` for every row of an input: the name (``row N``, ``line N``) names a row without an id."""
    if path.is_dir():
        yield from _dataset_records(path, split)
        return
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        position = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=WRITE_BATCH):
            for record in batch.to_pylist():
                position += 1
                yield f"row {position}", record
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for position, record in enumerate(csv.DictReader(handle), 1):
                yield f"row {position}", record
    elif suffix == ".jsonl":
        yield from _jsonl(path)
    elif suffix == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            if "Extra data" not in str(exc):
                raise UserTaskError(f"{path}: not JSON ({one_line(exc)})") from None
            yield from _jsonl(path)  # JSON Lines named .json
            return
        if not isinstance(loaded, list):
            raise UserTaskError(f"{path}: not a JSON list of rows")
        for position, record in enumerate(loaded, 1):
            yield f"row {position}", record
    else:
        raise UserTaskError(f"{path}: unknown kind of file; expected {', '.join(SUFFIXES)} or a folder written by "
                            f"datasets.save_to_disk")


def _jsonl(path: Path) -> Iterator[tuple[str, object]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield f"line {number}", json.loads(line)
                except json.JSONDecodeError:
                    yield f"line {number}", _NOT_JSON


_NOT_JSON = object()


def _dataset_records(path: Path, split: str) -> Iterator[tuple[str, object]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise UserTaskError(f"{path}: a folder, but not one written by datasets.save_to_disk "
                            f"({one_line(exc)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        chosen = split if split in loaded else names[0] if len(names) == 1 else None
        if chosen is None:
            raise UserTaskError(f"{path}: a DatasetDict with splits {', '.join(names)} and none named {split}")
        loaded = loaded[chosen]
    table = loaded.with_format("arrow")  # images stay undecoded {"bytes", "path"}: a broken one is its row's problem
    for start in range(0, len(loaded), WRITE_BATCH):
        for offset, record in enumerate(table[start : start + WRITE_BATCH].to_pylist()):
            yield f"row {start + offset + 1}", record


def _text(value) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None, NaN: an empty cell
        return ""
    return str(value).strip()


def _without_image_token(text: str) -> str:
    """A turn's text without LLaVA's ``<image>`` placeholder (the image goes to the model apart from the text).

    >>> _without_image_token("<image>\\nWhat is  shown?"), _without_image_token("Is it <image> red?")
    ('What is shown?', 'Is it red?')
    """
    if IMAGE_TOKEN not in text:
        return text.strip()
    lines = (" ".join(line.split()) for line in text.replace(IMAGE_TOKEN, " ").splitlines())
    return "\n".join(line for line in lines if line)


def _pairs(turns: list[tuple[str, str]], asker: str, answerer: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs of alternating turns, or a :class:`_RowProblem`.

    >>> _pairs([("human", "q1"), ("gpt", "a1"), ("human", "q2"), ("gpt", "a2")], "human", "gpt")
    [('q1', 'a1'), ('q2', 'a2')]
    """
    if not turns or len(turns) % 2 or any(
            (role, other) != (asker, answerer) for (role, _), (other, _) in zip(turns[::2], turns[1::2], strict=True)):
        raise _RowProblem(f"turns do not alternate {asker}/{answerer}")
    return [(question, answer) for (_, question), (_, answer) in zip(turns[::2], turns[1::2], strict=True)]


def _message_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text") or "" for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    raise _RowProblem("a message's content is neither text nor a list of parts")


def _parse(record: dict) -> tuple[str, object, list[_Draft]]:
    """``(format, image value, drafts)`` of one input row, or a :class:`_RowProblem`."""
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise _RowProblem("conversations is not a list of turns")
        pairs = _pairs([(t.get("from"), _without_image_token(_text(t.get("value")))) for t in turns], "human", "gpt")
        return "llava", record.get("image"), [_Draft(q, [a] if a else [], []) for q, a in pairs]
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _RowProblem("messages is not a list of messages")
        turns = [(m.get("role"), _without_image_token(_message_text(m.get("content"))))
                 for m in messages if m.get("role") != "system"]  # the task's one prompt replaces a system turn
        pairs = _pairs(turns, "user", "assistant")
        return "trl", record.get("images"), [_Draft(q, [a] if a else [], []) for q, a in pairs]
    if "question" in record and "answer" in record and "image" in record:
        answer = record["answer"]
        answers = [_text(a) for a in answer] if isinstance(answer, (list, tuple)) else [_text(answer)]
        if any(not a for a in answers):
            answers = []  # an empty reference among others is an empty answer too
        return "table", record["image"], [_Draft(_text(record["question"]), answers, _choices(record.get("choices")))]
    raise _RowProblem("in none of the formats (LLaVA image+conversations, TRL images+messages, "
                      "table image+question+answer)")


def _choices(value) -> list[str]:
    """A row's choices: a list, ``|``-separated text (a CSV cell), or nothing.

    >>> _choices("red | green|blue"), _choices(["a", " b "]), _choices(None), _choices("")
    (['red', 'green', 'blue'], ['a', 'b'], [], [])
    """
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    text = _text(value)
    return [part.strip() for part in text.split("|")] if text else []


def _image_bytes(value, root: Path) -> tuple[bytes, str | None]:
    """The stored bytes of a row's one image and its file name: from a path (relative to ``root``), datasets'
    ``{"bytes", "path"}``, bytes or a PIL image."""
    from PIL import Image

    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise _RowProblem(f"{len(value)} images (one image per row)" if value else "no image")
        value = value[0]
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue(), None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return bytes(data), Path(path).name if path else None
        value = path
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value), None
    if isinstance(value, str) and value.strip():
        path = Path(value.strip()).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise _RowProblem("image file not found")
        try:
            return path.read_bytes(), path.name
        except OSError:
            raise _RowProblem("image file unreadable") from None
    raise _RowProblem("no image")


def _pixels_hash(data: bytes) -> str:
    """A content hash of the decoded image (size and RGB pixels): the same picture in another file or format matches.
    Raises :class:`_RowProblem` for what cannot be decoded."""
    from forgetbench.suite.images import UnreadableImage, open_image

    try:
        image = rgb(open_image(data))
    except UnreadableImage as exc:
        raise _RowProblem(exc.reason) from None
    digest = hashlib.sha256(f"{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:16]


# -- refusals ---------------------------------------------------------------------------------------------------------


class _Problems:
    """Rows refused, grouped by input and reason, for the one-line message."""

    def __init__(self):
        self.rows: dict[tuple[str, str], list[str]] = {}
        self.totals: dict[str, int] = {}
        self.files: list[str] = []  # problems of a whole input

    def add(self, where: str, reason: str, row: str) -> None:
        self.rows.setdefault((where, reason), []).append(row)

    def __bool__(self) -> bool:
        return bool(self.rows or self.files)

    def message(self) -> str:
        """E.g. ``--train a.jsonl, 2 of 60 rows: empty answer (q4, q7)``, the parts joined by ``; ``."""
        parts = list(self.files)
        for (where, reason), rows in self.rows.items():
            more = f" and {len(rows) - SHOWN_IDS} more" if len(rows) > SHOWN_IDS else ""
            shown = ", ".join(rows[:SHOWN_IDS]) + more
            parts.append(f"{where}, {len(rows)} of {self.totals.get(where, len(rows))} rows: {reason} ({shown})")
        return "; ".join(parts)


# -- writing the task -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SplitReport:
    source: str
    formats: dict[str, int]  # rows per input format
    rows: int
    documents: int


@dataclasses.dataclass
class AddedTask:
    name: str
    folder: Path
    yaml: Path
    include_path: Path  # what ``lmms-eval --include_path`` takes: the folder holding every user task
    metric: str  # the primary metric lmms-eval reports
    scale: str  # its forgetbench scale (compare)
    closed: bool  # likelihood over choices
    splits: dict[str, SplitReport]
    overlap: int  # test rows whose image is also in train (kept only with allow_overlap)

    def summary(self) -> str:
        counts = ", ".join(f"{r.documents} {split} documents from {r.rows} rows ({_formats(r.formats)})"
                           for split, r in self.splits.items())
        overlap = f"; {self.overlap} test rows share an image with train (allowed)" if self.overlap else ""
        return (f"wrote {self.folder}: {counts}; metric {self.metric} ({self.scale}){overlap}\n"
                f"  lmms-eval --tasks {self.name} --include_path {self.include_path} ...")


def _formats(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" if len(counts) > 1 else kind for kind, n in counts.items())


def check_name(name: str, tasks_dir: Path | None = None) -> None:
    """Refuse a task name lmms-eval cannot use or that another task already has: letters, digits and underscores,
    a letter first; not forgetbench's own (nor its ``forgetbench_`` prefix); not one of lmms-eval's built-in task or
    group names (those win a collision); not a task declared by another YAML under ``tasks_dir``.

    >>> check_name("my_colours_v2")
    >>> check_name("forgetbench_lab_color")
    Traceback (most recent call last):
    ...
    forgetbench.suite.user_tasks.UserTaskError: NAME forgetbench_lab_color: the forgetbench_ prefix is ...
    """
    if not NAME_PATTERN.fullmatch(name or ""):
        raise UserTaskError(f"NAME {name!r}: use letters, digits and underscores, starting with a letter")
    if name.startswith(RESERVED_PREFIX):
        raise UserTaskError(f"NAME {name}: the {RESERVED_PREFIX} prefix is forgetbench's own tasks'")
    from forgetbench import suite

    if name in suite.TASKS or name in suite.GROUPS:
        raise UserTaskError(f"NAME {name}: a forgetbench task of that name exists")
    if name in _lmms_eval_names():
        raise UserTaskError(f"NAME {name}: lmms-eval has a built-in task or group of that name, which would win")
    if tasks_dir is not None and tasks_dir.is_dir():
        for path in _yaml_files(tasks_dir):
            if path.parent != tasks_dir / name and name in _declared_names(path):
                raise UserTaskError(f"NAME {name}: {path} already declares a task of that name")


def _declared_names(path: Path) -> set[str]:
    pattern = re.compile(r"^(?:task|group)\s*:\s*[\"']?([A-Za-z0-9_.\-]+)[\"']?\s*(?:#.*)?$", re.M)
    try:
        return set(pattern.findall(path.read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return set()


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.yaml") if not any(part.startswith(".") for part in p.parts))


def _lmms_eval_names() -> set[str]:
    """Every task and group name lmms-eval ships (its task YAMLs' ``task:``/``group:`` lines and file names): a
    text scan, ~0.2 s, where its TaskManager takes ~8 s."""
    import importlib.util

    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        return set()
    names: set[str] = set()
    for folder in spec.submodule_search_locations:
        for path in (Path(folder) / "tasks").rglob("*.yaml"):
            names |= _declared_names(path) | {path.stem}
    return names


def _yaml_text(name: str, metric: str, closed: bool) -> str:
    hooks = "forgetbench.suite.user_tasks"
    head = f"""\
# Written by `forgetbench task add` ({MARKER} beside it says from what). Prompt and scorer are the functions of
# {hooks}, the ones training reads (forgetbench.suite.user_tasks.train_conversations): docs/your-data.md.
task: {name}
dataset_path: parquet
dataset_kwargs: {{data_files: {{train: data/train.parquet, test: data/test.parquet}}}}
training_split: train
test_split: test
doc_to_visual: !function {hooks}.doc_to_visual
doc_to_text: !function {hooks}.doc_to_text
cluster_key: image_hash  # questions about one image resample together (clustered intervals)
"""
    if closed:
        primary, scale = "acc", "fraction"
        body = f"""\
# Closed set: the choice with the lowest loss wins. Needs a model that scores likelihoods with images
# (--model forgetbench).
output_type: multiple_choice
doc_to_target: !function {hooks}.doc_to_target_index
doc_to_choice: !function {hooks}.doc_to_choice
process_results: !function {hooks}.process_choice
score_key: acc  # lmms-eval's per-sample statistics (--baseline) read this field
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
"""
    else:
        primary, scale, tokens, process, aggregation = {
            "exact_match": ("exact_match", "fraction", 32, "process_exact_match", "mean"),
            "anls": ("anls", "fraction", 32, "process_anls", "mean"),
            "cider": (CIDER_METRIC, "cider", 64, "process_cider", f"!function {hooks}.cider"),
        }[metric]
        score_key = "" if metric == "cider" else \
            f"score_key: {primary}  # lmms-eval's per-sample statistics (--baseline) read this field\n"
        body = f"""\
output_type: generate_until
doc_to_target: !function {hooks}.doc_to_target
process_results: !function {hooks}.{process}
generation_kwargs:
  max_new_tokens: {tokens}
  temperature: 0
  do_sample: false
{score_key}metric_list:
  - {{metric: {primary}, aggregation: {aggregation}, higher_is_better: true}}
"""
    tail = f"""\
metadata:
  version: 1.0
  forgetbench:
    primary_metric: {primary}
    scale: {scale}
"""
    return head + body + tail


def _scratch(tasks_dir: Path, name: str, kind: str) -> Path:
    """A hidden folder beside the task's (same file system, so the final rename is atomic); lmms-eval and
    :func:`list_tasks` skip hidden folders."""
    return tasks_dir / f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _check_existing(folder: Path, overwrite: bool, inputs: list[Path]) -> list[str] | None:
    """The files a previous ``task add`` wrote in ``folder`` (to remove after the swap), None when the folder is
    free; a refusal for a folder we did not write, one we did without ``overwrite``, or one holding other files."""
    if folder.is_symlink():
        raise UserTaskError(f"{folder} is a symbolic link: left alone; choose another NAME or --dir")
    if not folder.exists():
        return None
    marker = _read_marker(folder)
    if marker is None:
        raise UserTaskError(f"{folder} exists and was not written by forgetbench task add: choose another NAME or "
                            f"--dir (it is left alone)")
    if not overwrite:
        raise UserTaskError(f"{folder} exists (a task written by forgetbench task add); pass --overwrite to "
                            f"replace it")
    ours = set(marker.get("files") or []) | {MARKER}
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    others = sorted(present - ours)
    if others:
        raise UserTaskError(f"{folder} holds files forgetbench did not write ({', '.join(others[:SHOWN_IDS])}"
                            f"{' ...' if len(others) > SHOWN_IDS else ''}): move them, or choose another NAME")
    for path in inputs:
        if _inside(path, folder):
            raise UserTaskError(f"{path} lies inside {folder}, which --overwrite would replace: copy it elsewhere "
                                f"first")
    return sorted(present & ours)


def _read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("written_by") == MARKER_KIND else None


class _SplitWriter:
    """Reads one input, checks its rows, writes its documents to parquet in batches."""

    def __init__(self, split: str, source: Path, where: str, root: Path, out: Path, problems: _Problems,
                 instruction: str, schema):
        self.split, self.source, self.where, self.root = split, source, where, root
        self.problems, self.instruction, self.schema = problems, instruction, schema
        self.out = out
        self.formats: dict[str, int] = {}
        self.hashes: set[str] = set()
        self.rows = self.documents = 0
        self.with_choices: list[str] = []  # row names, to refuse a task scored both ways
        self.without_choices: list[str] = []
        self.overlap: list[str] = []
        self.bad_choices: list[str] = []

    def run(self, train_hashes: set[str] | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        seen: set[str] = set()
        batch: list[dict] = []
        with pq.ParquetWriter(str(self.out), self.schema) as writer:
            for fallback, record in _records(self.source, self.split):
                self.rows += 1
                row = fallback
                try:
                    if record is _NOT_JSON:
                        raise _RowProblem("not JSON")
                    if not isinstance(record, dict):
                        raise _RowProblem("not an object with named fields")
                    given = _text(record.get("id"))
                    row = given or fallback
                    kind, image, drafts = _parse(record)
                    if given:
                        if given in seen:
                            raise _RowProblem("duplicate id")
                        seen.add(given)
                    for draft in drafts:
                        if not draft.question:
                            raise _RowProblem("empty question")
                        if not draft.answers:
                            raise _RowProblem("empty answer")
                    data, file_name = _image_bytes(image, self.root)
                    image_hash = _pixels_hash(data)
                except _RowProblem as problem:
                    self.problems.add(self.where, str(problem), row)
                    continue
                self.formats[kind] = self.formats.get(kind, 0) + 1
                choices = drafts[0].choices
                (self.with_choices if choices else self.without_choices).append(row)
                if choices and (len(set(choices)) < 2 or drafts[0].answers[0] not in choices):
                    self.bad_choices.append(row)
                if train_hashes is not None and image_hash in train_hashes:
                    self.overlap.append(row)
                self.hashes.add(image_hash)
                for turn, draft in enumerate(drafts, 1):
                    batch.append({"id": row if len(drafts) == 1 else f"{row}#{turn}", "source_id": row,
                                  "turn": turn, "image": {"bytes": data, "path": file_name},
                                  "image_hash": image_hash, "question": draft.question, "answer": draft.answers[0],
                                  "answers": draft.answers, "choices": draft.choices,
                                  "instruction": self.instruction})
                if len(batch) >= WRITE_BATCH:
                    writer.write_table(pa.Table.from_pylist(batch, schema=self.schema))
                    self.documents += len(batch)
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=self.schema))
                self.documents += len(batch)
        self.problems.totals[self.where] = self.rows
        if self.rows == 0:
            self.problems.files.append(f"{self.where}: no rows")

    def report(self) -> SplitReport:
        return SplitReport(str(self.source), self.formats, self.rows, self.documents)


def add_task(name: str, train: str | Path, test: str | Path, tasks_dir: str | Path = DEFAULT_DIR,
             image_root: str | Path | None = None, metric: str = "exact_match", allow_overlap: bool = False,
             overwrite: bool = False, instruction: str | None = None) -> AddedTask:
    """Write ``tasks_dir/name/`` from a train and a test file (any of the three formats) and return what was written.

    Every row is checked before anything is kept: images present and readable (relative paths resolve against
    ``image_root``, else the folder the input is in), answers and questions not empty, ids unique within a file,
    every row in one of the formats, choices (if any) on every row of both splits with the answer among them, and
    no test image in train (pixel hash; counted, kept only with ``allow_overlap``). A refusal is one
    :class:`UserTaskError` naming the rows (first ids and a count) and leaves ``tasks_dir`` as it was: the task is
    built in a hidden scratch folder and renamed into place at the end. An existing ``tasks_dir/name`` is replaced
    only if a previous ``add_task`` wrote it and ``overwrite`` is given.

    ``metric``: ``exact_match`` (default; rows with choices are scored by likelihood, ``acc``), ``anls`` or
    ``cider``. ``instruction``: appended to every question (default: forgetbench's short-answer instruction,
    none for ``cider``).
    """
    if metric not in METRICS:
        raise UserTaskError(f"--metric {metric}: use one of {', '.join(METRICS)}")
    tasks_dir = Path(tasks_dir).expanduser()
    sources = {"train": Path(train).expanduser(), "test": Path(test).expanduser()}
    for split, path in sources.items():
        if not path.exists():
            raise UserTaskError(f"--{split} {path}: no such file or folder")
    roots = {split: Path(image_root).expanduser() if image_root is not None else path.resolve().parent
             for split, path in sources.items()}
    if image_root is not None and not Path(image_root).expanduser().is_dir():
        raise UserTaskError(f"--image-root {image_root}: no such folder")
    if tasks_dir.exists() and not tasks_dir.is_dir():
        raise UserTaskError(f"--dir {tasks_dir}: exists and is not a folder")
    check_name(name, tasks_dir)
    folder = tasks_dir / name
    old_files = _check_existing(folder, overwrite, [*sources.values(), *roots.values()])
    if instruction is None:
        instruction = "" if metric == "cider" else SHORT_ANSWER

    import datasets

    features = _features()
    schema = features.arrow_schema
    created = _missing_parents(tasks_dir)
    tasks_dir.mkdir(parents=True, exist_ok=True)
    scratch = _scratch(tasks_dir, name, "partial")
    problems = _Problems()
    done = False
    try:
        (scratch / "data").mkdir(parents=True)
        writers = {split: _SplitWriter(split, sources[split], f"--{split} {sources[split]}", roots[split],
                                       scratch / "data" / f"{split}.parquet", problems, instruction, schema)
                   for split in SPLITS}
        try:
            writers["train"].run(None)
            writers["test"].run(writers["train"].hashes)
        except UnicodeDecodeError as exc:
            raise UserTaskError(f"an input is not UTF-8 text ({one_line(exc)})") from None
        except (OSError, ValueError, TypeError, csv.Error) as exc:  # a file pyarrow, csv or datasets cannot read
            raise UserTaskError(f"cannot read the input: {one_line(exc)}") from None
        closed = _check_splits(writers, metric, problems, allow_overlap)
        if problems:
            raise UserTaskError(f"nothing written; {problems.message()}")
        added = AddedTask(name, folder, folder / f"{name}.yaml", tasks_dir.resolve(),
                          "acc" if closed else CIDER_METRIC if metric == "cider" else metric,
                          "cider" if metric == "cider" and not closed else "fraction", closed,
                          {split: w.report() for split, w in writers.items()}, len(writers["test"].overlap))
        (scratch / added.yaml.name).write_text(_yaml_text(name, metric, closed), encoding="utf-8")
        files = [added.yaml.name, "data/train.parquet", "data/test.parquet"]
        marker = {"written_by": MARKER_KIND, "task": name, "files": files, "metric": added.metric,
                  "scale": added.scale, "output_type": "multiple_choice" if closed else "generate_until",
                  "instruction": instruction, "image_root": {s: str(r.resolve()) for s, r in roots.items()},
                  "splits": {s: dataclasses.asdict(r) for s, r in added.splits.items()},
                  "image_overlap": {"test_rows": added.overlap, "allowed": allow_overlap},
                  "versions": {"forgetbench": _version(), "datasets": datasets.__version__}}
        (scratch / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _swap_in(scratch, folder, old_files)
        done = True
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)  # ours: created above
        if not done:
            for path in created:  # the folders this call made, innermost first, if still empty
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
    return added


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _check_splits(writers: dict[str, _SplitWriter], metric: str, problems: _Problems, allow_overlap: bool) -> bool:
    """The checks over whole splits; returns whether the task is a closed set (rows with choices)."""
    with_choices = sum(len(w.with_choices) for w in writers.values())
    without = sum(len(w.without_choices) for w in writers.values())
    for w in writers.values():
        for row in w.bad_choices:
            problems.add(w.where, "fewer than 2 distinct choices, or the answer is not one of them", row)
        if with_choices and without:  # name the rarer kind: the likely mistakes
            rows, what = (w.with_choices, "has choices") if with_choices < without else (
                w.without_choices, "has no choices")
            for row in rows:
                problems.add(w.where, f"{what}, unlike {max(with_choices, without)} other rows (a task is scored "
                                      f"one way)", row)
    if with_choices and not without and metric != "exact_match":
        first_where = next(w.where for w in writers.values() if w.with_choices)
        problems.add(first_where, f"has choices, which are scored by likelihood (acc), not --metric {metric}",
                     next(w.with_choices[0] for w in writers.values() if w.with_choices))
    test = writers["test"]
    if test.overlap and not allow_overlap:
        for row in test.overlap:
            problems.add(test.where, "image also in train (pass --allow-overlap to keep them)", row)
    return bool(with_choices) and not without


def _swap_in(scratch: Path, folder: Path, old_files: list[str] | None) -> None:
    """Rename the finished scratch folder to ``folder``; a previous task of ours is moved aside first and only
    the files its marker lists are removed (nothing else was there: :func:`_check_existing`)."""
    if old_files is None:
        try:
            scratch.rename(folder)
        except OSError:
            if folder.exists():  # another `task add` of the same name finished first
                raise UserTaskError(f"{folder} appeared while this task was written; nothing of it replaced") from None
            raise
        return
    aside = _scratch(folder.parent, folder.name, "old")
    folder.rename(aside)
    try:
        scratch.rename(folder)
    except OSError:
        aside.rename(folder)
        raise
    for relative in old_files:
        (aside / relative).unlink(missing_ok=True)
    for path in sorted((p for p in aside.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        path.rmdir()
    aside.rmdir()


def _version() -> str:
    import forgetbench

    return forgetbench.__version__


# -- reading a task back (training, the registry) ----------------------------------------------------------------------


def list_tasks(tasks_dir: str | Path) -> dict[str, Path]:
    """``{name: YAML}`` of every task ``task add`` wrote under ``tasks_dir`` (a folder holding its marker)."""
    tasks_dir = Path(tasks_dir).expanduser()
    found = {}
    for marker in sorted(tasks_dir.glob(f"*/{MARKER}")) if tasks_dir.is_dir() else []:
        if marker.parent.name.startswith("."):  # a task being written or replaced
            continue
        written = _read_marker(marker.parent)
        name = written.get("task") if written else None
        if isinstance(name, str) and NAME_PATTERN.fullmatch(name) and (marker.parent / f"{name}.yaml").is_file():
            found[name] = marker.parent / f"{name}.yaml"
    return found


def is_user_task(name: str, tasks_dir: str | Path | None) -> bool:
    """Whether ``name`` is a task ``task add`` wrote under ``tasks_dir`` (False when ``tasks_dir`` is None)."""
    return tasks_dir is not None and name in list_tasks(tasks_dir)


def task_yaml(task: str | Path, tasks_dir: str | Path | None = None) -> Path:
    """The YAML of a user task: ``task`` is its YAML, its folder, or its name under ``tasks_dir``."""
    if tasks_dir is not None and NAME_PATTERN.fullmatch(str(task)):
        found = list_tasks(tasks_dir)
        if str(task) not in found:
            known = ", ".join(found) or "none"
            raise UserTaskError(f"{task}: no task written by forgetbench task add under {tasks_dir} (there: {known})")
        return found[str(task)]
    path = Path(task).expanduser()
    folder = path.parent if path.suffix == ".yaml" else path
    marker = _read_marker(folder)
    name = marker.get("task") if marker else None
    if not (isinstance(name, str) and NAME_PATTERN.fullmatch(name) and (folder / f"{name}.yaml").is_file()):
        raise UserTaskError(f"{task}: not a task folder written by forgetbench task add (no {MARKER} and YAML)")
    return folder / f"{name}.yaml"


def task_config(task: str | Path, tasks_dir: str | Path | None = None) -> dict:
    """The task's lmms-eval config as lmms-eval reads it, ``!function`` hooks imported (what
    ``forgetbench.suite.task_config`` gives for a registered task; the forgetting probe reads that)."""
    from lmms_eval.utils import load_yaml_config

    return load_yaml_config(str(task_yaml(task, tasks_dir)), mode="full")


def _read_yaml(path: Path) -> dict:
    """The task YAML as data, ``!function`` hooks left as their dotted names (no import of lmms-eval needed)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    loader = Loader(path.read_text(encoding="utf-8"))  # a SafeLoader: only !function is added, read as text
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_split(task: str | Path, split: str = "test", tasks_dir: str | Path | None = None):
    """One split of a user task's documents, from the parquet file its YAML names (as lmms-eval loads it)."""
    import datasets

    from forgetbench.suite.images import quiet_progress

    path = task_yaml(task, tasks_dir)
    files = (_read_yaml(path).get("dataset_kwargs") or {}).get("data_files") or {}
    if split not in files:
        raise UserTaskError(f"{path}: no {split} split (splits: {', '.join(files) or 'none'})")
    with quiet_progress():
        return datasets.load_dataset("parquet", data_files={split: str(path.parent / files[split])}, split=split)


def train_conversations(task: str | Path, split: str = "train", tasks_dir: str | Path | None = None,
                        on_bad_rows: Callable | None = None):
    """A user task's ``split`` as TRL vision-language SFT rows (``images``, ``messages``), asked with the very prompt
    its evaluation uses (:func:`prompt`), as :func:`forgetbench.suite.train_conversations` gives a registered
    task's. Images are read first (``images.readable``): unreadable rows raise one ``UnreadableRows``, or with
    ``on_bad_rows`` are handed to it and left out."""
    from forgetbench.suite import images

    dataset = images.readable(load_split(task, split, tasks_dir), to_sft_example, split, on_bad_rows)
    return dataset.map(to_sft_example, remove_columns=dataset.column_names)


# -- the command -------------------------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Your own data (LLaVA JSON/JSONL, TRL images+messages, or a table: image, question, "
                          "answer[, choices]) as an lmms-eval task folder; prints the --include_path to use.")
    parser.add_argument("name", metavar="NAME", help="the task's lmms-eval name (letters, digits, underscores)")
    parser.add_argument("--train", required=True, help="training rows: .json, .jsonl, .csv, .parquet or a "
                        "datasets.save_to_disk folder")
    parser.add_argument("--test", required=True, help="evaluation rows, in any of the same formats")
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"where task folders go (default {DEFAULT_DIR}/): "
                        "the --include_path")
    parser.add_argument("--image-root", help="relative image paths resolve here (default: the data file's folder)")
    parser.add_argument("--metric", default="exact_match", choices=METRICS,
                        help="free-generation score (default exact_match); rows with choices are scored by "
                        "likelihood (acc)")
    parser.add_argument("--instruction", help="appended to every question (default: 'Answer the question using a "
                        "single word or phrase.'; none for cider); '' for none")
    parser.add_argument("--allow-overlap", action="store_true",
                        help="keep test rows whose image is also in train (counted in the marker)")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR/NAME if task add wrote it")


def run(args: argparse.Namespace) -> int:
    """``forgetbench task add``: the summary on stderr, the ``--include_path`` folder alone on stdout."""
    added = add_task(args.name, args.train, args.test, args.dir, args.image_root, args.metric, args.allow_overlap,
                     args.overwrite, args.instruction)
    print(added.summary(), file=sys.stderr)
    return emit(str(added.include_path))


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m forgetbench.suite.user_tasks", configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
