"""The statistics of a task row, each declared once: its field in compare.json's ``tasks`` rows, how it is computed
from what the comparison found for that task (:class:`TaskScore`), and its cells in the printed table and
compare.md, in compare.csv and in the study's report.html.

Adding a statistic is one :class:`Stat` in :data:`STATS` (with its test, and a line in docs/compare-schema.md):
report.py builds every row from :data:`STATS` (:func:`task_row`), render.py draws the tables and the CSV from it,
and report.html takes :func:`html_header` and :func:`html_cells`. :class:`TaskScore` already holds the paired
per-document scores, so a statistic of them needs nothing else.

The order of :data:`STATS` is the order of the columns in every output and of the fields in a row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from forgetbench.compare import stats

Row = Mapping  # one task row of compare.json (the dict :func:`task_row` builds)


@dataclass
class TaskScore:
    """What the comparison found for one task of one method, before its row is built: ``points`` is (pre, post)."""

    metric: str
    scale: str
    points: tuple[float, float]
    cluster_key: str | None
    n: int | None = None
    dropped: int = 0
    flips: dict | None = None
    mcnemar: dict | None = None
    deviations: np.ndarray | None = None  # bootstrap deviations of the delta (points)
    unit: str | None = None  # what the bootstrap resamples: document, cluster, image, image pair
    clusters: int | None = None  # how many of them the paired documents hold
    values: tuple[np.ndarray, np.ndarray] | None = None  # per-document scores (points) of the paired documents
    confidence: float = 0.95  # of the intervals
    unscorable: dict | None = None  # {pre, post}: documents whose image --model forgetbench could not decode
    measure: dict | None = None  # power.measure_documents / measure_units of the paired scores (variance, n, deff)
    power: dict | None = None  # the task's row of power.plan_block: mde, mde_one_sided, n_needed_budget, ...


@dataclass(frozen=True)
class Cell:
    """One column of the tables: its header and its cell in the printed table and compare.md (``text``) and in
    report.html (``html``; None: not shown there). A ``numeric`` column is right-aligned; ``tone`` gives report.html
    a CSS class for the value (``neg``/``pos``)."""

    header: str
    text: Callable[[Row], str]
    html: Callable[[Row], str] | None = None
    numeric: bool = True
    tone: Callable[[Row], str] | None = None


@dataclass(frozen=True)
class Stat:
    """One statistic of a task row: its ``field``, its value ``compute(score, base)`` (``base``: the row's ``pre``,
    ``post``, ``delta`` in points and ``role``), its table ``cells`` (``on_request``: only with ``--relative``, after
    the others) and its ``csv`` columns as ``(name, value of the row)``; None in a CSV cell is an empty cell."""

    field: str
    compute: Callable[[TaskScore, Mapping], object]
    cells: tuple[Cell, ...] = ()
    csv: tuple[tuple[str, Callable[[Row], object]], ...] = ()
    on_request: bool = False


def number_text(x, sign: bool = True, digits: int = 2) -> str:
    """A number for a table cell, ``-`` for none.

    >>> number_text(3.14159), number_text(3.14159, sign=False, digits=1), number_text(None)
    ('+3.14', '3.1', '-')
    """
    return "-" if x is None else f"{x:{'+' if sign else ''}.{digits}f}"


def interval_text(ci, digits: int = 2) -> str:
    """An interval for a table cell.

    >>> interval_text([-1.0, 2.5]), interval_text([-1.0, 2.5], 1), interval_text(None)
    ('[-1.00, +2.50]', '[-1.0, +2.5]', '-')
    """
    return "-" if not ci else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def _p(test) -> str:
    return "-" if not test else f"{test['pvalue']:.3g}"


def _value(field: str) -> Callable[[Row], object]:
    return lambda row: row.get(field)


def _text(field: str, html: bool = True) -> Cell:
    """A left-aligned column showing the field as it is (in report.html too, with ``html``)."""
    def cell(row: Row) -> str:
        return str(row[field])
    return Cell(field, cell, cell if html else None, numeric=False)


def _points(field: str, sign: bool) -> Cell:
    """A column of points: 2 decimals in the printed table and compare.md, 1 in report.html."""
    return Cell(field, lambda row: number_text(row[field], sign), lambda row: number_text(row[field], sign, 1),
                tone=(lambda row: "neg" if row[field] < 0 else "pos") if sign else None)


def _flip(kind: str, header: str) -> Cell:
    def cell(row: Row) -> str:
        return str((row.get("flips") or {}).get(kind, "-"))
    return Cell(header, cell, cell)


def _base(field: str) -> Callable[[TaskScore, Mapping], object]:
    return lambda score, base: base[field]


def _score(attribute: str) -> Callable[[TaskScore, Mapping], object]:
    return lambda score, base: getattr(score, attribute)


def _delta_ci(score: TaskScore, base: Mapping) -> list[float] | None:
    return None if score.deviations is None else stats.interval(base["delta"], score.deviations, score.confidence)


def _power(key: str) -> Callable[[TaskScore, Mapping], object]:
    return lambda score, base: (score.power or {}).get(key)


def underpowered_text(row: Row) -> str:
    """``yes (N docs)`` when the task's one-sided MDE exceeds the budget (N documents would suffice), ``no``, or
    ``-`` (a downstream task, or no variance to plan with).

    >>> underpowered_text({"underpowered": True, "n_needed_budget": 1392}), underpowered_text({"underpowered": None})
    ('yes (1392 docs)', '-')
    """
    flag = row.get("underpowered")
    return "-" if flag is None else f"yes ({row['n_needed_budget']} docs)" if flag else "no"


STATS: tuple[Stat, ...] = (
    Stat("role", _base("role"), (_text("role"),), (("role", _value("role")),)),
    Stat("metric", _score("metric"), (_text("metric", html=False),), (("metric", _value("metric")),)),
    Stat("scale", _score("scale"), csv=(("scale", _value("scale")),)),
    Stat("pre", _base("pre"), (_points("pre", sign=False),), (("pre", _value("pre")),)),
    Stat("post", _base("post"), (_points("post", sign=False),), (("post", _value("post")),)),
    Stat("delta", _base("delta"), (_points("delta", sign=True),), (("delta", _value("delta")),)),
    Stat("delta_ci", _delta_ci, (Cell("delta CI", lambda row: interval_text(row["delta_ci"]),
                                      lambda row: interval_text(row["delta_ci"], 1)),),
         (("ci_low", lambda row: (row["delta_ci"] or [None, None])[0]),
          ("ci_high", lambda row: (row["delta_ci"] or [None, None])[1]))),
    Stat("relative", lambda score, base: stats.relative_change(base["pre"], base["post"]),
         (Cell("rel %", lambda row: number_text(row["relative"])),), (("relative", _value("relative")),),
         on_request=True),
    Stat("n", _score("n"), csv=(("n", _value("n")),)),
    Stat("dropped", _score("dropped"), csv=(("dropped", _value("dropped")),)),
    Stat("flips", _score("flips"), (_flip("forgotten", "forgot"), _flip("learned", "learned")),
         (("forgotten", lambda row: (row["flips"] or {}).get("forgotten")),
          ("learned", lambda row: (row["flips"] or {}).get("learned")))),
    Stat("mcnemar", _score("mcnemar"), (Cell("McNemar p", lambda row: _p(row["mcnemar"]),
                                             lambda row: _p(row["mcnemar"])),),
         (("mcnemar_p", lambda row: (row["mcnemar"] or {}).get("pvalue")),)),
    Stat("mde", _power("mde"), (Cell("MDE", lambda row: number_text(row.get("mde"), False),
                                      lambda row: number_text(row.get("mde"), False, 1)),),
         (("mde", _value("mde")),)),
    Stat("mde_one_sided", _power("mde_one_sided"), csv=(("mde_one_sided", _value("mde_one_sided")),)),
    Stat("n_needed_budget", _power("n_needed_budget"), csv=(("n_needed_budget", _value("n_needed_budget")),)),
    Stat("underpowered", _power("underpowered"), (Cell("underpowered", underpowered_text, underpowered_text),),
         (("underpowered", _value("underpowered")),)),
    Stat("cluster_key", _score("cluster_key")),
    Stat("unit", _score("unit")),
    Stat("clusters", _score("clusters")),
    Stat("unscorable", _score("unscorable")),
)


def task_row(score: TaskScore, base: Mapping) -> dict:
    """One row of compare.json's ``tasks``: every statistic of :data:`STATS`, in its order.

    >>> row = task_row(TaskScore("acc", "fraction", (40.0, 60.0), None),
    ...                {"pre": 40.0, "post": 60.0, "delta": 20.0, "role": "upstream"})
    >>> row["metric"], row["delta"], row["relative"], row["delta_ci"], row["flips"]
    ('acc', 20.0, 50.0, None, None)
    """
    return {stat.field: stat.compute(score, base) for stat in STATS}


def table_cells(relative: bool = False) -> list[Cell]:
    """The columns of the per-task table (printed and compare.md): every statistic's, then (``relative``) those
    shown on request."""
    return [cell for on_request in (False, True) if relative or not on_request
            for stat in STATS if stat.on_request == on_request for cell in stat.cells]


def csv_columns() -> list[tuple[str, Callable[[Row], object]]]:
    """The per-task columns of compare.csv, ``(name, value of a row)``, between ``method, task`` and
    ``trainable_parameters``."""
    return [column for stat in STATS for column in stat.csv]


def html_header() -> list[tuple[str, str]]:
    """``(header, CSS class)`` of report.html's per-task columns (after its own arm and task columns)."""
    return [(cell.header, "" if cell.numeric else "text") for cell in table_cells() if cell.html is not None]


def html_cells(row: Row) -> list[tuple[str, str]]:
    """``(text, CSS class)`` of one task row in report.html, matching :func:`html_header`; Jinja2 escapes them.

    >>> row = task_row(TaskScore("acc", "fraction", (50.0, 40.0), None),
    ...                {"pre": 50.0, "post": 40.0, "delta": -10.0, "role": "upstream"})
    >>> [text for text, _ in html_cells(row)], html_cells(row)[3]
    (['upstream', '50.0', '40.0', '-10.0', '-', '-', '-', '-', '-', '-'], ('-10.0', 'neg'))
    """
    return [(cell.html(row), "text" if not cell.numeric else cell.tone(row) if cell.tone else "")
            for cell in table_cells() if cell.html is not None]
