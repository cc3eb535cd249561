"""Writing report files all-or-nothing, and the small renderers (aligned text, Markdown, CSV) they share."""

from __future__ import annotations

import csv
import io
import json
import os
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
