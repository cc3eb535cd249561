"""A task statistic is declared once (forgetbench.compare.columns.STATS): its compare.json field, its table, CSV and
report.html cells all follow from that one entry, and the documented formats follow the declarations."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from test_compare import DOWN, POST, PRE, UP, lmms_results, write_output

from forgetbench.compare import columns, main, render

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DOC = (REPO / "docs" / "compare-schema.md").read_text(encoding="utf-8")


def _spread(score, base):
    """Population standard deviation of the per-document deltas (points)."""
    if score.values is None:
        return None
    deltas = score.values[1] - score.values[0]
    return float(((deltas - deltas.mean()) ** 2).mean() ** 0.5)


SPREAD = columns.Stat("spread", _spread,
                      (columns.Cell("sd", lambda r: columns.number_text(r["spread"], False),
                                    lambda r: columns.number_text(r["spread"], False, 1)),),
                      (("delta_sd", lambda r: r["spread"]),))


def test_a_new_statistic_is_one_declaration(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(columns, "STATS", (*columns.STATS, SPREAD))
    pre, post = write_output(tmp_path / "pre", lmms_results(PRE)), write_output(tmp_path / "post", lmms_results(POST))
    out = tmp_path / "o"
    assert main(["--pre", str(pre), "--post", str(post), "--downstream", DOWN, "--upstream", UP, "--resamples", "0",
                 "--out", str(out)]) == 0
    # chartqa: 12 of 20 documents go 0 -> 100 points, 8 stay: sd = 100 * sqrt(0.6 * 0.4) = 48.99
    row = json.loads((out / "compare.json").read_text())["tasks"]["chartqa"]
    assert row["spread"] == pytest.approx(100 * (0.6 * 0.4) ** 0.5)
    printed = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(printed) if line.startswith("task "))  # after the recommendation
    assert printed[header].split()[-1] == "sd" and printed[header + 1].split()[-1] == "48.99"
    assert "| sd |" in (out / "compare.md").read_text()
    with open(out / "compare.csv", newline="") as fh:
        records = list(csv.DictReader(fh))
    assert list(records[0])[-2:] == ["delta_sd", "trainable_parameters"]
    assert float(records[0]["delta_sd"]) == pytest.approx(48.98979)
    assert columns.html_header()[-1] == ("sd", "") and columns.html_cells(row)[-1] == ("49.0", "")


def test_report_html_columns():
    """The per-task columns report.html shows (after its arm and task columns), as the study's template had them."""
    assert [h for h, _ in columns.html_header()] == ["role", "pre", "post", "delta", "delta CI", "forgot", "learned",
                                                     "McNemar p", "MDE", "underpowered"]
    row = {"role": "upstream", "pre": 90.0, "post": 80.0, "delta": -10.0, "delta_ci": [-25.0, 0.0],
           "flips": {"forgotten": 2, "learned": 0}, "mcnemar": {"pvalue": 0.5}, "mde": 18.7893,
           "underpowered": True, "n_needed_budget": 1392}
    assert columns.html_cells(row) == [("upstream", "text"), ("90.0", ""), ("80.0", ""), ("-10.0", "neg"),
                                       ("[-25.0, +0.0]", ""), ("2", ""), ("0", ""), ("0.5", ""), ("18.8", ""),
                                       ("yes (1392 docs)", "")]


def test_text_columns_come_before_numbers():
    """The tables right-align from the first numeric column on, so no text column may follow a number."""
    for relative in (False, True):
        numeric = [cell.numeric for cell in columns.table_cells(relative)]
        assert numeric == sorted(numeric), numeric


def test_documented_csv_columns_and_row_fields():
    """docs/compare-schema.md lists compare.csv's columns in order and every field of a task row."""
    listed = re.search(r"columns `([^`]+)`", SCHEMA_DOC)
    documented = [c.strip() for c in listed.group(1).split(",")]
    assert documented == list(render.csv_fields())
    task_row = SCHEMA_DOC.split("## TaskRow", 1)[1].split("\n## ", 1)[0]
    fields = {f for line in task_row.splitlines() if line.startswith("| `")
              for f in re.findall(r"`(\w+)`", line.split("|")[1])}
    assert {stat.field for stat in columns.STATS} <= fields
