"""The comparison itself: one or many post runs against a pre run, as the compare.json report.

Per task: the primary metric in points, the paired bootstrap deviations, right/wrong flips and McNemar's test
from the sample logs, and what the pair can detect (the MDE of :mod:`.power`, from the same paired scores); per
method: E, F, O with their intervals and MDEs, their wording ("forgot 1.2 points (not significant; this study
detects 3.4 or more)"), the pairing found, the manifest's parameter count and the forgetting probe's curve; for many
methods, the Pareto front; always, the recommended arm (:mod:`.recommend`). Typed inputs (:class:`CompareOptions`),
no argparse here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from forgetbench.compare import columns, corpus, pairing, power, recommend, render, runs, scores, stats
from forgetbench.compare.columns import TaskScore
from forgetbench.compare.errors import CompareError
from forgetbench.compare.options import check_roles, check_tasks  # noqa: F401 - also report's API, as before

SCHEMA = "forgetbench.compare/2"


@dataclass(frozen=True)
class CompareOptions:
    """How to compare: bootstrap resamples (0: no intervals), interval level, seed, whether to tolerate
    mismatched runs (compare the common samples only), per-task metric and scale overrides, and the forgetting
    ``budget`` in points (an upstream task or F whose one-sided MDE exceeds it is underpowered; the recommendation's
    rule reads it)."""

    resamples: int = 10000
    confidence: float = 0.95
    seed: int = 0
    allow_mismatch: bool = False
    metrics: Mapping[str, str] = field(default_factory=dict)
    scales: Mapping[str, str] = field(default_factory=dict)
    budget: float = 2.0


POWER = 0.8  # the power at which an MDE is detected; its level alpha is 1 - confidence (the intervals' own)


# --------------------------------------------------------------------------
# Checks of the inputs (the CLI runs them in its own order, before parsing TASK=VALUE options)
# --------------------------------------------------------------------------

# Fewer resamples put 2 or 3 of them in each tail of a 95 % interval: its ends would be single draws.
MIN_RESAMPLES = 100


def check_bootstrap(resamples: int, confidence: float, seed: int = 0) -> None:
    """Refuse interval settings that would give no interval worth printing, or a numpy traceback."""
    if resamples < 0 or not 0 < confidence < 1:
        raise CompareError("--resamples must be >= 0 and --confidence between 0 and 1")
    if 0 < resamples < MIN_RESAMPLES:
        raise CompareError(f"--resamples {resamples}: use 0 (no intervals) or at least {MIN_RESAMPLES}; fewer leave "
                           f"each end of the interval to a couple of resamples")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CompareError(f"--seed {seed}: must be a whole number >= 0")


def check_budget(budget: float) -> None:
    """Refuse a budget that is not a positive number of points.

    >>> check_budget(0)
    Traceback (most recent call last):
    ...
    forgetbench.compare.errors.CompareError: --budget must be a positive number of points, got 0
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise CompareError(f"--budget must be a positive number of points, got {budget!r}")


def check_choice(option: str, task: str, value: str, tasks: Sequence[str]) -> None:
    """One ``--metric`` or ``--metric-scale`` choice: a compared task and, for a scale, a known one."""
    if task not in tasks:
        raise CompareError(f"{option}: '{task}' is not among the compared tasks")
    if option == "--metric-scale":
        try:
            stats.scale_factor(value)
        except ValueError:
            raise CompareError(f"{option}: scale of '{task}' must be {stats.SCALE_HELP}, got {value!r}") from None


def check_outputs(inputs: Sequence[str | Path], out: str | Path | None, json_path: str | Path | None,
                  html_path: str | Path | None = None) -> None:
    """Refuse ``--out``/``--json``/``--html`` equal to or inside an input run (after resolving links): outputs are never
    written over or into what is being read. A run is the path given and, for a results file, the folder holding
    it (its sample logs lie there); an output folder that merely contains the runs (``OUT`` of a study, with
    ``OUT/eval/pre``) is fine.

    >>> check_outputs(["/runs/pre"], "/runs/pre/report", None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    forgetbench.compare.errors.CompareError: --out /runs/pre/report: inside the input run /runs/pre; write ...
    >>> check_outputs(["/study/eval/pre"], "/study", "/study/compare.json")
    """
    runs_read = set()
    for given in inputs:
        path = Path(given).resolve()
        runs_read |= {path, path.parent} if path.is_file() else {path}
    for option, target in (("--out", out), ("--json", json_path), ("--html", html_path)):
        if target is None:
            continue
        resolved = Path(target).resolve()
        for run in sorted(runs_read):
            if resolved == run or run in resolved.parents:
                raise CompareError(f"{option} {target}: inside the input run {run}; write outputs elsewhere")


def check_method_names(names: Sequence[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CompareError(f"--post: method name used twice: {', '.join(dupes)} (use --post NAME=DIR)")


# --------------------------------------------------------------------------
# One method: pre versus post
# --------------------------------------------------------------------------

def _answer(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@dataclass
class _Pair:
    """A pre and a post run being compared, and what the comparison found so far."""

    pre: dict
    pre_label: str
    post: dict
    label: str
    name: str
    mismatches: list[pairing.Mismatch] = field(default_factory=list)
    forgotten: list[dict] = field(default_factory=list)
    learned: list[dict] = field(default_factory=list)
    dropped: dict[str, dict] = field(default_factory=dict)

    def task(self, task: str, metric: str | None, scale: str | None, resamples: int, seed) -> TaskScore:
        """The score of one task, from results.json and the sample logs."""
        both = ((self.pre, self.pre_label), (self.post, self.label))
        metric, scale, values = scores.paired_scores(both, task, metric, scale)
        base = metric.split(",")[0]
        key = scores.cluster_key(self.pre, task, self.pre_label)
        out = TaskScore(metric, scale, tuple(stats.to_points(v, scale) for v in values), key)
        pre_s, post_s = (runs.load_samples(run, task, base, key, label) for run, label in both)
        if (pre_s is None) != (post_s is None):
            self.mismatches.append(pairing.sample_log_mismatch(task, pre_s is not None, self.label))
        if pre_s is None or post_s is None:
            return out
        common, found = pairing.sample_mismatches(pre_s, post_s, task, self.label)
        self.mismatches += found
        lost = len(pre_s) + len(post_s) - 2 * len(common)
        numeric = bool(common) and pre_s[common[0]].value is not None and post_s[common[0]].value is not None
        if numeric:
            # Each log against its own run's aggregate, over all its documents, before any is dropped and whatever
            # --allow-mismatch says: that flag tolerates other settings, never a log that contradicts its results.
            means = [float(np.mean([x.value for x in log.values()])) for log in (pre_s, post_s)]
            if not all(abs(m - v) <= 1e-9 + 1e-6 * abs(v) for m, v in zip(means, values, strict=True)):
                if scores.is_mean(self.pre, task, base):
                    raise CompareError(f"{self.label}: task '{task}': per-sample '{base}' averages to "
                                       f"{means[0]:.6g} (pre) / {means[1]:.6g} (post) but results say "
                                       f"{values[0]:.6g} / {values[1]:.6g}")
                numeric = False  # a corpus-level score (CIDEr, MME): no per-sample statistics
        vals = [np.array([s[d].value for d in common]) for s in (pre_s, post_s)] if numeric else None
        if lost:
            self.dropped[task] = {"pre": len(pre_s) - len(common), "post": len(post_s) - len(common)}
            out.dropped = lost
            if not numeric:  # only reachable under --allow-mismatch (a mismatch was recorded)
                self.mismatches.append(pairing.unrestrictable_mismatch(task, self.dropped[task], self.label))
                return out
            out.points = tuple(stats.to_points(float(np.mean(v)), scale) for v in vals)  # the common docs only
        out.n = len(common)
        factor = stats.scale_factor(scale)[0]
        if not numeric:  # a corpus-level metric: intervals from its per-unit scores where this part knows them
            units = corpus.units_of(base, [pre_s[d].raw for d in common], [post_s[d].raw for d in common]) \
                if resamples and not lost else None
            recomputed = units is not None and all(
                abs(u - v) <= 1e-6 * max(1.0, abs(v)) for u, v in zip((units.pre_value, units.post_value), values,
                                                                        strict=True))
            if recomputed:  # the logs reproduce results.json: resample their units
                out.unit, out.clusters = units.kind, len(units.pre)
                out.deviations = stats.stratified_deviations(
                    (units.post - units.pre) * factor, units.strata, resamples, np.random.default_rng(seed))
                out.measure = power.measure_units(units, factor, sum(1 for d in common if pre_s[d].raw is not None))
            return out
        out.values = (vals[0] * factor, vals[1] * factor)
        clusters = [pre_s[d].cluster for d in common] if key else None
        out.measure = power.measure_documents(vals[0], vals[1], factor, scale, clusters)
        out.unit, out.clusters = ("cluster", len(set(clusters))) if key else ("document", len(common))
        if resamples:
            out.deviations = stats.bootstrap_deviations(
                (vals[1] - vals[0]) * factor, clusters, resamples, np.random.default_rng(seed))
        if all(np.isin(v, (0.0, 1.0)).all() for v in vals):
            out.flips = stats.flip_counts(*vals)
            out.mcnemar = stats.mcnemar_test(out.flips)
            for kind, rows, before in (("forgotten", self.forgotten, 1), ("learned", self.learned, 0)):
                rows += [
                    {"method": self.name, "task": task, "doc_id": d, "input": _answer(pre_s[d].input),
                     "target": _answer(pre_s[d].target), "pre_answer": _answer(pre_s[d].answer),
                     "post_answer": _answer(post_s[d].answer), "kind": kind}
                    for d, a, b in zip(common, *vals, strict=True) if a == before and b == 1 - before]
        return out


MANIFEST_KEYS = ("method", "base_model", "trainable_parameters", "seed", "steps")
PROBE_KEYS = ("every", "limit", "budget", "stopped_at_step", "restored_step", "reason")


def power_settings(options: CompareOptions) -> dict:
    """The settings :func:`.power.plan_block` plans with: alpha = 1 - confidence, :data:`POWER`, the budget (also
    the ``delta`` of its ``n_needed``)."""
    alpha = 1.0 - options.confidence
    return {"delta": float(options.budget), "alpha": alpha, "power": POWER, "budget": float(options.budget),
            "flip_rate": power.DEFAULT_FLIP_RATE, "z_two_sided": power.z_sum(alpha, POWER, 2),
            "z_one_sided": power.z_sum(alpha, POWER, 1)}


def probe_curve(manifest: Mapping | None) -> dict | None:
    """The forgetting probe of the checkpoint (forgetbench/train/probe.py): its manifest entry ``probe`` and the
    ``forgetting_probe.jsonl`` it names beside the manifest, as ``{every, limit, budget, stopped_at_step,
    restored_step, reason, curve: [{step, E, F, F_ci}]}``; None when the probe did not run. Lines that are not a
    probe record are skipped (the curve is an illustration, not a statistic compare reports)."""
    entry = (manifest or {}).get("probe")
    if not isinstance(entry, dict):
        return None
    out = {k: entry.get(k) for k in PROBE_KEYS}
    out["curve"] = []
    folder = manifest.get("_folder")
    log = Path(folder) / str(entry.get("log") or "forgetting_probe.jsonl") if folder else None
    try:
        lines = runs.read_regular(log, "probe").splitlines() if log is not None and log.is_file() else []
    except (OSError, ValueError, CompareError):
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        value = {k: record.get(k) for k in ("step", "E", "F", "F_ci")}
        if all(v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in (value["E"], value["F"])):
            out["curve"].append(value)
    return out


def compare_method(pre: dict, pre_label: str, name: str, post_path: str | Path, downstream: list[str],
                   upstream: list[str], options: CompareOptions) -> tuple[dict, list[dict], list[dict]]:
    """The report of one post run against ``pre``, its forgotten and its learned samples (rows of forgotten.csv
    and learned.csv)."""
    label = f"--post {post_path}"
    pair = _Pair(pre, pre_label, runs.load_run(Path(post_path), label), label, name)
    tasks = downstream + upstream
    pair.mismatches += pairing.run_mismatches(pre, pair.post, tasks, pre_label, label)
    manifest = runs.load_manifest(pair.post, label)
    unscorable = [runs.load_unscorable(run, run_label) for run, run_label in ((pre, pre_label), (pair.post, label))]
    pair.mismatches += [m for m in [pairing.manifest_mismatch(pre, manifest, label)] if m]
    seeds = np.random.SeedSequence(options.seed).spawn(len(tasks))  # one stream per task: tasks independent
    scored = {task: pair.task(task, options.metrics.get(task), options.scales.get(task), options.resamples, seed)
              for task, seed in zip(tasks, seeds, strict=True)}
    if pair.mismatches and not options.allow_mismatch:
        raise CompareError(pair.mismatches[0].refusal())
    unrestricted = [m for m in pair.mismatches if not m.restrictable]
    if unrestricted:
        raise CompareError(unrestricted[0].message)
    report = stats.specialization_forgetting({t: s.points[0] for t, s in scored.items()},
                                             {t: s.points[1] for t, s in scored.items()}, downstream, upstream)
    if not all(math.isfinite(report[k]) for k in "EFO"):  # finite but huge inputs can overflow
        raise CompareError("scores too large: E, F or O is not finite")
    deviations = {t: s.deviations for t, s in scored.items() if s.deviations is not None}
    # What the pair can detect, per task and for E and F: forgetbench power's planning on the same paired scores
    roles = {**dict.fromkeys(downstream, "downstream"), **dict.fromkeys(upstream, "upstream")}
    unmeasured = {"n": None, "clusters": None, "variance": None, "variance_source": None, "design_effect": 1.0}
    measured = {t: {"scale": s.scale, **(s.measure or unmeasured), "delta": report["tasks"][t]["delta"]}
                for t, s in scored.items()}
    planned = power.plan_block(measured, roles, power_settings(options))
    for task, s in scored.items():
        s.confidence = options.confidence
        s.power = planned["tasks"][task]
        s.unscorable = None if unscorable == [None, None] else {
            side: (counts or {}).get(task, 0) for side, counts in zip(("pre", "post"), unscorable, strict=True)}
        report["tasks"][task] = columns.task_row(s, report["tasks"][task])  # from pre, post, delta, role
    cis = stats.efo_intervals(report, deviations, options.confidence) if options.resamples else dict.fromkeys("EFO")
    report.update({f"{k}_ci": v for k, v in cis.items()})
    e_plan, f_plan = planned["E"], planned["F"]
    report.update(E_mde=e_plan["mde"], E_mde_one_sided=e_plan["mde_one_sided"], F_mde=f_plan["mde"],
                  F_mde_one_sided=f_plan["mde_one_sided"], F_n_needed_budget=f_plan["n_needed_budget"],
                  F_n_needed_per_task=power.budget_split(f_plan, planned) if f_plan["n_needed_budget"] else None,
                  F_underpowered=f_plan["underpowered"],
                  E_significant=render.significant(report["E_ci"]),
                  F_significant=render.significant(report["F_ci"]))
    report["verdict"] = render.verdict_words(report)
    report.update(name=name, post=str(post_path),
                  trainable_parameters=manifest.get("trainable_parameters") if manifest else None,
                  manifest={k: manifest.get(k) for k in MANIFEST_KEYS} if manifest else None,
                  probe=probe_curve(manifest),
                  pairing={"mismatches": [m.message for m in pair.mismatches], "dropped": pair.dropped,
                           **(pairing.version_notes(pre, pair.post) or {})})
    return report, pair.forgotten, pair.learned


# --------------------------------------------------------------------------
# Many methods
# --------------------------------------------------------------------------

@dataclass
class Comparison:
    """The result of :func:`compare_runs`.

    ``report`` is what compare.json holds (schema ``forgetbench.compare/2``, docs/compare-schema.md): one
    method's report at the top level for one post run, else ``methods`` and ``pareto``. ``forgotten`` are the
    rows of forgotten.csv (right before, wrong after), ``learned`` those of learned.csv (wrong before, right
    after), every method's, each row with ``kind`` "forgotten" or "learned".
    """

    report: dict
    forgotten: list[dict]
    learned: list[dict] = field(default_factory=list)
    inputs: tuple[str, ...] = ()  # the runs read (pre, then every post), which no output may be written into

    def table(self, relative: bool = False) -> str:
        """The plain-text table ``forgetbench compare`` prints (``relative``: add post/pre - 1 in %)."""
        return render.format_table(self.report, relative)

    def html(self, **extras) -> str:
        """The HTML report (:func:`.html.render_html`; ``extras``: a caller's additions, as the study's)."""
        from forgetbench.compare.html import render_html

        return render_html(self.report, self.forgotten, self.learned, **extras)

    def write(self, out: Path | None = None, json_path: Path | None = None, html_path: Path | None = None) -> None:
        """Write ``json_path`` (the report), ``html_path`` (:meth:`html`) and, into ``out`` (created if needed),
        compare.json, compare.md, compare.csv, forgotten.csv, learned.csv, ef.png and ef.svg: all or nothing; an
        OSError is a CompareError, and so is an output inside an input run (:func:`check_outputs`)."""
        out, json_path, html_path = (Path(p) if p is not None else None for p in (out, json_path, html_path))
        check_outputs(self.inputs, out, json_path, html_path)
        files = render.render_files(self.report, self.forgotten, out, json_path, self.learned)
        if html_path is not None:
            files[html_path] = self.html().encode("utf-8")
        render.write_files(files, out)


def compare_runs(pre: str | Path, posts: Sequence[tuple[str, str | Path]], downstream: Sequence[str],
                 upstream: Sequence[str], options: CompareOptions = CompareOptions()) -> Comparison:  # noqa: B008
    """Compare the lmms-eval output ``pre`` (a folder or its results file) with every ``(name, post)``.

    ``downstream`` tasks make E, ``upstream`` tasks make F. Raises :class:`CompareError` (a one-line message
    naming the input) for anything the user must fix.
    """
    check_tasks(downstream, "--downstream")
    check_tasks(upstream, "--upstream")
    downstream, upstream = list(downstream), list(upstream)
    check_roles(downstream, upstream)
    check_bootstrap(options.resamples, options.confidence, options.seed)
    check_budget(options.budget)
    tasks = downstream + upstream
    for option, choices in (("--metric", options.metrics), ("--metric-scale", options.scales)):
        for task, value in choices.items():
            check_choice(option, task, value, tasks)
    if not posts:
        raise CompareError("--post: no post run")
    check_method_names([name for name, _ in posts])
    pre_label = f"--pre {pre}"
    pre_run = runs.load_run(Path(pre), pre_label)
    methods, forgotten, learned = {}, [], []
    for name, path in posts:
        methods[name], lost, gained = compare_method(pre_run, pre_label, name, path, downstream, upstream, options)
        forgotten += lost
        learned += gained
    shared = {"schema": SCHEMA, "pre": str(pre),
              "bootstrap": {"resamples": options.resamples, "confidence": options.confidence, "seed": options.seed},
              "power": {"alpha": 1.0 - options.confidence, "power": POWER, "budget": float(options.budget)},
              "recommendation": recommend.recommend(methods, options.budget, options.confidence)}
    inputs = (str(pre), *(str(path) for _, path in posts))
    if len(methods) == 1:
        return Comparison({**next(iter(methods.values())), **shared}, forgotten, learned, inputs)
    front = stats.pareto_front({n: (m["E"], m["F"]) for n, m in methods.items()})
    return Comparison({**shared, "methods": methods, "pareto": front}, forgotten, learned, inputs)
