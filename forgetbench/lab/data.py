"""The lab's datasets, generated deterministically and shipped as parquet beside the task YAMLs.

Upstream tasks (colour, shape, count, printed digits) use drawn images, the printed digits in Pillow's bundled
font; the downstream task uses real scanned handwritten digits from scikit-learn's bundled ``load_digits``, so
nothing is downloaded. Regenerate the shipped files with::

    forgetbench lab data

Beside them, a general replay set (:func:`general_replay_rows`, shipped as ``general_replay.parquet`` in TRL's
vision format, :func:`general_replay_path`): instruction rows about freshly drawn images that no evaluated lab task
asks, for ``--replay_data`` (docs/lab.md).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from forgetbench import tasks_path
from forgetbench.errors import command_main, emit
from forgetbench.suite.lab import COLORS, COUNTS, DIGITS, LAB_TASKS, SHAPES

IMAGE_SIZE = 32
GENERAL_REPLAY = "general_replay.parquet"
GENERAL_SEED = 3  # the task splits draw with seeds 1 (train) and 2 (test): fresh images
# Rows of each kind in the general replay set: 400 in all.
GENERAL_SIZES = {"describe_shape": 100, "describe_dots": 60, "position": 120, "say": 120}
DESCRIBE = "Describe the image in a few words."
POSITION = "Is the shape on the left or on the right?"
SPLIT_SIZES = {task: (2000, 200) for task in ("color", "shape", "count", "printed")}  # (train, test)
DIGITS_TEST_SIZE = 300
RGB = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 10),
}


def _canvas(rng: np.random.Generator) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    background = tuple(int(v) for v in rng.integers(215, 256, size=3))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    return image, ImageDraw.Draw(image)


def draw_shape(shape: str, color: str, rng: np.random.Generator) -> Image.Image:
    """One shape, roughly centred (the tiny vision tower learns centred shapes quickly)."""
    image, draw = _canvas(rng)
    half = int(rng.integers(8, 13))
    cx, cy = (int(v) for v in rng.integers(IMAGE_SIZE // 2 - 3, IMAGE_SIZE // 2 + 4, size=2))
    _paint(draw, shape, cx, cy, half, RGB[color], thinnest_arm=2)
    return image


def _paint(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, half: int, fill, thinnest_arm: int) -> None:
    """A circle, square, triangle or cross of half-width ``half`` centred on (cx, cy)."""
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    elif shape == "cross":
        arm = max(thinnest_arm, half // 3)
        draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def draw_dots(count: int, rng: np.random.Generator) -> Image.Image:
    """``count`` dots of one colour, one per quadrant-ish cell so they never touch."""
    image, draw = _canvas(rng)
    fill = RGB[COLORS[int(rng.integers(len(COLORS)))]]
    cells = rng.permutation(4)[:count]
    for cell in cells:
        x0, y0 = (cell % 2) * 16, (cell // 2) * 16
        x, y = x0 + int(rng.integers(3, 8)), y0 + int(rng.integers(3, 8))
        draw.ellipse((x, y, x + 6, y + 6), fill=fill)
    return image


def draw_printed(text: str, rng: np.random.Generator) -> Image.Image:
    """A digit in Pillow's bundled font, dark ink, a random size and offset."""
    image, draw = _canvas(rng)
    font = ImageFont.load_default(size=int(rng.integers(20, 29)))
    ink = tuple(int(v) for v in rng.integers(0, 90, size=3))
    x, y = (IMAGE_SIZE // 2 + int(v) for v in rng.integers(-4, 5, size=2))
    draw.text((x, y), text, font=font, fill=ink, anchor="mm")
    return image


def _upstream_rows(task: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        if task == "color":
            answer = COLORS[i % len(COLORS)]
            image = draw_shape(SHAPES[int(rng.integers(len(SHAPES)))], answer, rng)
        elif task == "shape":
            answer = SHAPES[i % len(SHAPES)]
            image = draw_shape(answer, COLORS[int(rng.integers(len(COLORS)))], rng)
        elif task == "printed":
            answer = DIGITS[i % len(DIGITS)]
            image = draw_printed(answer, rng)
        elif task == "count":
            answer = COUNTS[i % len(COUNTS)]
            image = draw_dots(COUNTS.index(answer) + 1, rng)
        else:
            raise ValueError(f"{task!r} is not an upstream lab task")
        rows.append({"id": f"{task}-{seed}-{i}", "task": task, "image": image, "answer": answer})
    return rows


def _digit_rows() -> dict[str, list[dict]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    rows = []
    for index in order:
        # 0..16 ink on 8x8 -> dark ink on a light page, upscaled to the lab's image size.
        pixels = (255 - digits.images[index] * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).convert("RGB")
        rows.append({"id": f"digits-{index}", "task": "digits", "image": image, "answer": str(digits.target[index])})
    return {"train": rows[DIGITS_TEST_SIZE:], "test": rows[:DIGITS_TEST_SIZE]}


def generate(task: str) -> dict[str, list[dict]]:
    """Rows of both splits of one lab task; the seeds make the files byte-for-byte reproducible."""
    if task == "digits":
        return _digit_rows()
    train, test = SPLIT_SIZES[task]
    return {"train": _upstream_rows(task, train, seed=1), "test": _upstream_rows(task, test, seed=2)}


def _shape_at(shape: str, color: str, side: str | None, rng: np.random.Generator) -> Image.Image:
    """One shape, centred (``side`` None) or in the left or right third of the image, smaller than the tasks'."""
    if side is None:
        return draw_shape(shape, color, rng)
    image, draw = _canvas(rng)
    half = int(rng.integers(4, 7))
    third = IMAGE_SIZE // 3
    cx = int(rng.integers(half, third)) if side == "left" else int(rng.integers(IMAGE_SIZE - third, IMAGE_SIZE - half))
    cy = int(rng.integers(IMAGE_SIZE // 2 - 4, IMAGE_SIZE // 2 + 5))
    _paint(draw, shape, cx, cy, half, RGB[color], thinnest_arm=1)
    return image


def _dots_in(count: int, color: str, rng: np.random.Generator) -> Image.Image:
    """``count`` dots of ``color``, one per quadrant (as :func:`draw_dots`, the colour chosen by the caller)."""
    image, draw = _canvas(rng)
    for cell in rng.permutation(4)[:count]:
        x = (cell % 2) * 16 + int(rng.integers(3, 8))
        y = (cell // 2) * 16 + int(rng.integers(3, 8))
        draw.ellipse((x, y, x + 6, y + 6), fill=RGB[color])
    return image


def _row(kind: str, i: int, image: Image.Image, question: str, answer: str) -> dict:
    return {"id": f"general-{kind}-{i}", "kind": kind, "images": [image],
            "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}


def general_replay_rows(seed: int = GENERAL_SEED) -> list[dict]:
    """The lab's general replay set, in TRL's vision format (``images`` + ``messages``, with ``id`` and ``kind``):
    instruction rows about freshly drawn images, none of them a question an evaluated lab task asks.

    - ``describe_shape``, ``describe_dots``: "Describe the image in a few words." -> "a red circle", "three blue
      dots" (captions: the colour, shape and count words in other sentences, on other images);
    - ``position``: "Is the shape on the left or on the right?" -> "left" / "right" (a skill no lab task measures);
    - ``say``: "Say <word>." over every lab answer word, on a blank canvas, as the base model's pre-training had.

    Deterministic for ``seed`` (the file shipped is ``seed`` 3), shuffled so every kind is spread through it.
    """
    from forgetbench.suite.lab import LAB_TASKS

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(GENERAL_SIZES["describe_shape"]):
        shape, color = SHAPES[i % len(SHAPES)], COLORS[(i // len(SHAPES)) % len(COLORS)]
        article = "an" if color[0] in "aeiou" else "a"
        image = _shape_at(shape, color, None, rng)
        rows.append(_row("describe_shape", i, image, DESCRIBE, f"{article} {color} {shape}"))
    for i in range(GENERAL_SIZES["describe_dots"]):
        count, color = COUNTS[i % len(COUNTS)], COLORS[(i // len(COUNTS)) % len(COLORS)]
        number = COUNTS.index(count) + 1
        answer = f"{count} {color} dot" + ("s" if number > 1 else "")
        rows.append(_row("describe_dots", i, _dots_in(number, color, rng), DESCRIBE, answer))
    for i in range(GENERAL_SIZES["position"]):
        side = ("left", "right")[i % 2]
        shape, color = SHAPES[(i // 2) % len(SHAPES)], COLORS[int(rng.integers(len(COLORS)))]
        rows.append(_row("position", i, _shape_at(shape, color, side, rng), POSITION, side))
    words = sorted({label for task in LAB_TASKS.values() for label in task.labels})
    for i in range(GENERAL_SIZES["say"]):
        word = words[i % len(words)]
        rows.append(_row("say", i, _canvas(rng)[0], f"Say {word}.", word))
    return [rows[int(j)] for j in rng.permutation(len(rows))]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_dir() -> Path:
    return tasks_path() / "lab" / "data"


def data_file(task: str, split: str) -> Path:
    return data_dir() / f"{task}_{split}.parquet"


def general_replay_path() -> Path:
    """The shipped general replay set (TRL's vision format, parquet): pass it as a recipe's ``--replay_data``."""
    return data_dir() / GENERAL_REPLAY


def write_general_replay(out_dir: Path | None = None) -> Path:
    """Writes :func:`general_replay_rows` as ``general_replay.parquet`` (images as PNG bytes)."""
    import datasets

    text = datasets.Value("string")
    features = datasets.Features({
        "id": text, "kind": text, "images": datasets.List(datasets.Image()),
        "messages": datasets.List({"role": text, "content": datasets.List(datasets.Json())}),
    })
    rows = general_replay_rows()
    table = {key: [row[key] for row in rows] for key in ("id", "kind", "messages")}
    table["images"] = [[{"bytes": _png(image), "path": None} for image in row["images"]] for row in rows]
    path = (out_dir or data_dir()) / GENERAL_REPLAY
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))
    return path


def write(out_dir: Path | None = None) -> list[Path]:
    import datasets

    features = datasets.Features(
        {"id": datasets.Value("string"), "task": datasets.Value("string"),
         "image": datasets.Image(), "answer": datasets.Value("string")}
    )
    out_dir = out_dir or data_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in LAB_TASKS:
        for split, rows in generate(task).items():
            table = {key: [row[key] for row in rows] for key in ("id", "task", "answer")}
            table["image"] = [{"bytes": _png(row["image"]), "path": None} for row in rows]
            path = out_dir / f"{task}_{split}.parquet"
            datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))
            written.append(path)
    return written + [write_general_replay(out_dir)]


def load(task: str, split: str):
    """One split of a lab task as a ``datasets.Dataset`` read from the shipped parquet file."""
    import datasets

    if task not in LAB_TASKS:
        raise ValueError(f"unknown lab task {task!r}; known: {', '.join(LAB_TASKS)}")
    path = data_file(task, split)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `forgetbench lab data`")
    return datasets.Dataset.from_parquet(str(path))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--out", type=Path, default=None, help="parquet folder (default: the shipped one)")


def run(args: argparse.Namespace) -> int:
    """``forgetbench lab data``: writes every lab split and the general replay set."""
    return emit("\n".join(str(path) for path in write(args.out)))


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m forgetbench.lab.data", configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
