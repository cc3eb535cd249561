"""The lab's datasets, generated deterministically and shipped as parquet beside the task YAMLs.

Upstream tasks (colour, shape, count, printed digits) use drawn images, the printed digits in Pillow's bundled
font; the downstream task uses real scanned handwritten digits from scikit-learn's bundled ``load_digits``, so
nothing is downloaded. Regenerate the shipped files with::

    forgetbench lab data
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
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = RGB[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    elif shape == "cross":
        arm = max(2, half // 3)
        draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image


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


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_dir() -> Path:
    return tasks_path() / "lab" / "data"


def data_file(task: str, split: str) -> Path:
    return data_dir() / f"{task}_{split}.parquet"


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
    return written


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
    """``forgetbench lab data``: writes every lab split."""
    return emit("\n".join(str(path) for path in write(args.out)))


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m forgetbench.lab.data", configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
