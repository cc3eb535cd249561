"""The compare part of forgetbench: what a fine-tune gained (E) and forgot (F), for one or many tuning methods.

Reads lmms-eval ``--output_path`` folders (the base model "pre" and one fine-tuned "post" per method), picks one
primary metric per task, puts every score on a 0-100 point scale and reports

* E (specialization): mean over downstream tasks of post - pre,
* F (forgetting): mean over upstream tasks of post - pre (negative = forgot),
* O (overall): E + F,

with paired bootstrap intervals, right/wrong flips and McNemar's test from the sample logs, the trainable
parameter count from the checkpoint manifest, and an E-versus-F plot with the Pareto front.

The Python API (what ``forgetbench study`` calls)::

    comparison = compare_runs("eval/pre", [("lora", "eval/post")], ["chartqa"], ["mmbench"], CompareOptions())
    comparison.report["E"]; print(comparison.table()); comparison.write(json_path=Path("compare.json"))

Modules: :mod:`.scores` (which metric, which scale), :mod:`.runs` (reading runs), :mod:`.pairing` (pairing checks),
:mod:`.stats` (pure statistics), :mod:`.corpus` (per-image CIDEr and MME scores, for their intervals),
:mod:`.power` (what a pair can detect: MDEs, ``forgetbench power``), :mod:`.recommend` (the arm to pick, by a stated
rule), :mod:`.report` (the comparison), :mod:`.columns` (each task statistic declared once: field, cells),
:mod:`.render`, :mod:`.plots` and :mod:`.html` (outputs; ``--html`` and the study's report.html),
:mod:`.options` (inputs shared by the commands), :mod:`.cli` (``forgetbench compare``), :mod:`.stages`
(``forgetbench stages``). See docs/metrics.md and docs/compare-schema.md.
"""

from __future__ import annotations

from forgetbench.compare.cli import configure_parser, main, run
from forgetbench.compare.errors import CompareError
from forgetbench.compare.report import CompareOptions, Comparison, compare_runs
from forgetbench.compare.runs import find_results_file

__all__ = ["CompareError", "CompareOptions", "Comparison", "compare_runs", "configure_parser", "find_results_file",
           "main", "run"]
