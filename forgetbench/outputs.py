"""Writing report files all-or-nothing, removing only what a command wrote (:func:`remove_owned`), and the small
renderers (aligned text, Markdown, CSV) they share."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path


def write_all_atomic(files: Mapping[Path, bytes]) -> None:
    """Write every file or none: each goes to a temp file in its folder first, then all are renamed into place.

    If a rename fails, the files already renamed are removed again, so an error never leaves a partial set.
    Raises OSError naming the requested file.
    """
    temps: dict[Path, str] = {}
    done: list[Path] = []
    current = None
    umask = os.umask(0)
    os.umask(umask)  # mkstemp makes 0600 files; give the usual 0666 & ~umask instead
    try:
        for current, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{current.name}.", suffix=".tmp", dir=current.parent)
            temps[current] = tmp
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~umask)
        for current, tmp in temps.items():
            os.replace(tmp, current)
            done.append(current)
    except BaseException as exc:
        for path, tmp in temps.items():
            try:
                os.unlink(path if path in done else tmp)
            except OSError:
                pass
        if isinstance(exc, OSError):  # name the file the user asked for, not the temp file
            raise OSError(exc.errno, exc.strerror, str(current)) from exc
        raise


def protected_folder(folder: Path) -> str | None:
    """Why ``folder`` is never emptied by a command, whatever it holds: the root, the home folder, the current
    directory or a git work tree's root; else None.

    >>> protected_folder(Path("/")), protected_folder(Path.home())
    ('the root folder', 'the home folder')
    """
    real = Path(os.path.realpath(folder))
    for reason, place in (("the root folder", real.anchor), ("the home folder", Path.home()),
                          ("the current directory", Path.cwd())):
        if real == Path(os.path.realpath(place)):
            return reason
    return "a git work tree's root" if (real / ".git").exists() else None


class NotOwned(Exception):
    """A folder a command was about to empty that it cannot tell it wrote: nothing was removed."""


def remove_owned(folder: Path, owned: Sequence[str], marker: str | None = None,
                 keep: Sequence[str] = ()) -> list[Path]:
    """Remove what a command wrote in ``folder`` and nothing else, the one rule every deletion of forgetbench's
    outputs, caches and scratch folders follows: the entries matching ``owned`` (glob patterns relative to
    ``folder``, such as ``"eval"``, ``"compare.*"``, ``"eval/.lora.partial"``), then ``folder`` itself if that left
    it empty. ``keep``: top-level names to leave in place (a lock file another process may be holding).

    Raises :class:`NotOwned` and removes nothing for a protected folder (:func:`protected_folder`) and, with
    ``marker`` (the file a command writes first to claim a folder, such as ``study.json``), for a folder without
    it; the marker itself goes last. A link is removed as a link, never followed. Returns what is left in
    ``folder`` (other than ``keep``), for the caller to name; nothing when ``folder`` does not exist.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("mine.json", "notes.txt", "logs/a.log"):
    ...     (root / name).parent.mkdir(exist_ok=True); _ = (root / name).write_text("x")
    >>> [p.name for p in remove_owned(root, ["mine.json", "logs"], marker="mine.json")]
    ['notes.txt']
    >>> try:
    ...     remove_owned(root, ["notes.txt"], marker="mine.json")
    ... except NotOwned as exc:
    ...     print(str(exc).removeprefix(f"{root}: "), [p.name for p in root.iterdir()])
    holds no mine.json, so nothing in it was written by this command ['notes.txt']
    """
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise NotOwned(f"{folder}: not a folder")
    reason = protected_folder(folder)
    if reason is not None:
        raise NotOwned(f"{folder}: {reason}; remove what should go yourself")
    if marker is not None and not (folder / marker).is_file():
        raise NotOwned(f"{folder}: holds no {marker}, so nothing in it was written by this command")
    found = {path for pattern in owned for path in folder.glob(pattern)}
    found = {path for path in found if not (path.parent == folder and path.name in keep)}
    # Inner paths before what holds them; the marker, the folder's claim, last: an interrupted removal is redone.
    for path in sorted(found, key=lambda p: (marker is not None and p == folder / marker, -len(p.parts))):
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        elif path.exists():
            shutil.rmtree(path)
    left = sorted(path for path in folder.iterdir() if path.name not in keep)
    if not left and not any(folder.iterdir()):
        folder.rmdir()
    return left


def json_bytes(data: Mapping) -> bytes:
    """Indented JSON, no NaN (strict JSON readers reject it).

    >>> json_bytes({"E": 1.5})
    b'{\\n  "E": 1.5\\n}\\n'
    """
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()


def text_grid(rows: Sequence[Sequence[str]], numeric_from: int) -> list[str]:
    """Columns padded to a common width; columns from ``numeric_from`` on are right-aligned.

    >>> text_grid([("task", "delta"), ("chartqa", "+60.00")], 1)
    ['task      delta', 'chartqa  +60.00']
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i >= numeric_from else c.ljust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]


def markdown_table(rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    """A GitHub Markdown table; the first row is the header.

    >>> print(markdown_table([("task", "delta"), ("chartqa", "+60.00")], 1))
    | task | delta |
    |---|---:|
    | chartqa | +60.00 |
    """
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---:" if i >= numeric_from else "---" for i in range(len(rows[0]))) + "|"
    return "\n".join([line(rows[0]), rule, *map(line, rows[1:])])


def csv_bytes(records: Sequence[Mapping], fields: Sequence[str]) -> bytes:
    """CSV with a header row; None becomes an empty cell.

    >>> csv_bytes([{"task": "a", "delta": 1.0, "ci": None}], ["task", "delta", "ci"])
    b'task,delta,ci\\r\\na,1.0,\\r\\n'
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue().encode()
