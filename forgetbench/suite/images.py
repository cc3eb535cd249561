"""Reading a stored image, and finding the rows of a split whose images cannot be read.

:func:`open_image` decodes every form a document's image takes (a PIL image, a path, datasets' undecoded
``{"bytes", "path"}``, raw bytes) and raises :class:`UnreadableImage` with a short reason for what no model can
see: no image, empty bytes, bytes PIL cannot identify, a truncated file, a 0x0 image, or one over PIL's
decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 pixels: PIL only warns between one and two
times the limit; forgetbench refuses from one time, so memory never depends on what a row claims). Converting a
readable image to RGB is :func:`forgetbench.suite.common.rgb`'s, the one conversion training and evaluation share.

:func:`unreadable_rows` is the check a training split goes through before any model loads (docs/faults.md); the
rows it finds are refused as one :class:`UnreadableRows` or, when the caller asks, left out.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Callable, Sequence

from PIL import Image, UnidentifiedImageError

# The column that names a row in a refusal, first found wins; else the row's index in the split.
ID_COLUMNS = ("id", "question_id", "image_id")
SHOWN_IDS = 5  # ids named in the one-line message
MANIFEST_IDS = 20  # ids kept in the manifest's skipped_rows


class UnreadableImage(ValueError):
    """A document's image cannot be decoded; ``reason`` is short enough for a one-line message."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnreadableImage):
        return exc.reason
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels, " if found else ""
        return f"too large ({size}over PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,})"
    if isinstance(exc, FileNotFoundError):
        return f"no such image file {exc.filename}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return "image file is truncated" if "truncated" in text else text


def check_size(image: Image.Image) -> Image.Image:
    """``image``, unless it has no pixels or more than PIL's decompression-bomb limit."""
    width, height = image.size
    if width == 0 or height == 0:
        raise UnreadableImage(f"zero-size image ({width}x{height})")
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise UnreadableImage(f"too large ({width}x{height} = {width * height:,} pixels, over PIL's "
                              f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,})")
    return image


@contextlib.contextmanager
def _strict_decoding():
    """A truncated file is unreadable whatever the process set: importing lmms-eval (lmms_eval/api/task.py) sets
    PIL's global ImageFile.LOAD_TRUNCATED_IMAGES, which would pad a truncated image with grey and score it."""
    from PIL import ImageFile

    before, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def open_image(value) -> Image.Image:
    """A stored image decoded in full: a PIL image, a path, datasets' ``{"bytes", "path"}`` or bytes."""
    if isinstance(value, Image.Image):  # datasets hands over a lazily opened image: its pixels decode here
        check_size(value)
        try:
            with _strict_decoding():
                value.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise UnreadableImage(_reason(exc)) from None
        return value
    if value is None:
        raise UnreadableImage("no image")
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and not path:
            raise UnreadableImage("no image")
        value = data if data is not None else path
    if isinstance(value, (bytes, bytearray)) and not value:
        raise UnreadableImage("empty image bytes")
    source = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value
    try:
        with warnings.catch_warnings(), _strict_decoding():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            check_size(image)  # from the header, before the pixels are decoded
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # SyntaxError: some PIL plugins report a broken header that way.
        raise UnreadableImage(_reason(exc)) from None
    return image


class UnreadableRows(ValueError):
    """Rows of a split whose images cannot be read: ``bad`` is ``[(position, row id, reason)]`` in row order."""

    def __init__(self, split: str, total: int, bad: Sequence[tuple[int, object, str]], id_column: str | None):
        self.split, self.total, self.bad, self.id_column = split, total, list(bad), id_column
        super().__init__(self.message())

    @property
    def ids(self) -> list:
        return [row for _, row, _ in self.bad]

    @property
    def positions(self) -> set[int]:
        return {position for position, _, _ in self.bad}

    def reasons(self) -> dict[str, list]:
        """The row ids per reason, reasons in the order they were first met."""
        found: dict[str, list] = {}
        for _, row, reason in self.bad:
            found.setdefault(reason, []).append(row)
        return found

    def message(self) -> str:
        """E.g. ``3 of 40 rows of split train have unreadable images (rows 4, 17, 31: cannot identify image
        file)``; rows are named by the id column when the split has one."""
        parts = []
        for reason, rows in self.reasons().items():
            label = f"{self.id_column} " if self.id_column else "rows " if len(rows) > 1 else "row "
            shown = ", ".join(str(r) for r in rows[:SHOWN_IDS])
            more = f" and {len(rows) - SHOWN_IDS} more" if len(rows) > SHOWN_IDS else ""
            parts.append(f"{label}{shown}{more}: {reason}")
        verb = "has an unreadable image" if len(self.bad) == 1 else "have unreadable images"
        return f"{len(self.bad)} of {self.total} rows of split {self.split} {verb} ({'; '.join(parts)})"

    def manifest_entry(self) -> dict:
        """What a manifest records under ``skipped_rows``: the count, the first ids and the reason(s)."""
        reasons = self.reasons()
        reason = next(iter(reasons)) if len(reasons) == 1 else \
            "; ".join(f"{reason} ({len(rows)})" for reason, rows in reasons.items())
        return {"count": len(self.bad), "ids": self.ids[:MANIFEST_IDS], "id_column": self.id_column or "row index",
                "reason": reason}


@contextlib.contextmanager
def quiet_progress():
    """datasets' progress bars off for a step that takes seconds (a bar would be the only line before an error)."""
    import datasets

    was_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def unreadable_rows(dataset, convert: Callable[[dict], object], split: str,
                    batch_size: int = 256) -> UnreadableRows | None:
    """Every row of ``dataset`` through ``convert`` (a task's SFT example, which decodes and converts each of its
    images with ``rgb``); the rows it cannot read, or None when all can.

    Rows are read as Arrow, so an image column holds its undecoded ``{"bytes", "path"}``: a broken image is that
    row's problem, not an exception inside datasets, and nothing is cast or written (no cache file)."""
    id_column = next((c for c in ID_COLUMNS if c in dataset.column_names), None)
    bad = []
    table = dataset.with_format("arrow")
    for start in range(0, len(dataset), batch_size):
        for offset, row in enumerate(table[start : start + batch_size].to_pylist()):
            try:
                convert(row)
            except UnreadableImage as exc:
                bad.append((start + offset, row[id_column] if id_column else start + offset, exc.reason))
    return UnreadableRows(split, len(dataset), bad, id_column) if bad else None


def readable(dataset, convert: Callable[[dict], object], split: str,
             on_bad_rows: Callable[[UnreadableRows], None] | None = None):
    """``dataset`` when ``convert`` reads every row; else :class:`UnreadableRows` is raised, or, with
    ``on_bad_rows``, handed to it and the dataset returned without those rows."""
    bad = unreadable_rows(dataset, convert, split)
    if bad is None:
        return dataset
    if on_bad_rows is None:
        raise bad
    on_bad_rows(bad)
    with quiet_progress():
        return dataset.select([i for i in range(len(dataset)) if i not in bad.positions])
