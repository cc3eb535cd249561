"""``forgetbench power``: the hand computations of its pure functions, a pre/post pair written as lmms-eval 0.7.3
writes it (results.json and sample logs, the helpers of test_compare.py) checked against numbers worked by hand,
the refusals, and (slow) a simulation of paired studies at the planned size that finds the nominal power."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_compare import lmms_results, sample_lines, write_output, write_samples
from test_compare_corpus import upstream_runs

from forgetbench.compare import power, stats

SUB = "Qwen__Qwen2-VL-2B-Instruct"
Z2, Z1 = 1.959963984540054 + 0.8416212335729143, 1.6448536269514722 + 0.8416212335729143  # alpha .05, power .8

# pre -> post in each task of 20 documents (documents 0..k-1 right, test_compare's convention):
#   chartqa (downstream): 2 -> 8 right: 6 wrong -> right; p01 = 0.3, Var(d) = 0.3 - 0.09 = 0.21 = 2100 points^2
#   mmbench (upstream):  18 -> 16 right: 2 right -> wrong; p10 = 0.1, Var(d) = 0.1 - 0.01 = 0.09 = 900 points^2
#   rsvqa (upstream, 4 questions per image): 10 -> 6 right: documents 6-9 right -> wrong, Var(d) = 0.2 - 0.04 = 1600
#     points^2; images 1 and 2 lost two each: design effect (2 x 1.2^2 + 3 x 0.8^2) / (20 x 0.16) = 4.8 / 3.2 = 1.5
PRE = {"chartqa": 0.10, "mmbench": 0.90, "rsvqa": 0.50}
POST = {"chartqa": 0.40, "mmbench": 0.80, "rsvqa": 0.30}


def doctests_of(module) -> doctest.TestResults:
    return doctest.testmod(module, optionflags=doctest.ELLIPSIS)


def test_doctests():
    result = doctests_of(power)
    assert result.failed == 0 and result.attempted >= 20


def write_run(root: Path, scores: dict) -> Path:
    """An lmms-eval output folder; rsvqa declares ``cluster_key: image_id`` and logs it on every line."""
    results = lmms_results(scores)
    results["configs"]["rsvqa"]["cluster_key"] = "image_id"
    write_output(root, results)
    lines = [{**line, "image_id": f"img{line['doc_id'] // 4}"} for line in sample_lines(results, "rsvqa")]
    write_samples(root / SUB, "rsvqa", lines)
    return root


@pytest.fixture
def pair(tmp_path):
    return write_run(tmp_path / "pre", PRE), write_run(tmp_path / "post", POST)


# --------------------------------------------------------------------------
# Pure functions, table-driven
# --------------------------------------------------------------------------

@pytest.mark.parametrize("p10, p01, expected", [
    (0.05, 0.05, 0.10),  # the assumed default
    (0.10, 0.00, 0.09),
    (0.00, 0.30, 0.21),
    (0.20, 0.20, 0.40),
    (0.00, 0.00, 0.00),
    (1.00, 0.00, 0.00),  # every document went right -> wrong: d = -1 always, no variance
])
def test_paired_variance_is_the_variance_of_d(p10, p01, expected):
    assert power.paired_variance(p10, p01) == pytest.approx(expected)
    d = np.array([-1.0] * round(p10 * 100) + [1.0] * round(p01 * 100) + [0.0] * round((1 - p10 - p01) * 100))
    assert d.var() == pytest.approx(expected)


@pytest.mark.parametrize("variance, n, sided, deff, expected", [
    (1000.0, 1000, 2, 1.0, Z2),
    (900.0, 20, 2, 1.0, Z2 * math.sqrt(45)),
    (900.0, 20, 1, 1.0, Z1 * math.sqrt(45)),
    (1600.0, 20, 2, 1.5, Z2 * math.sqrt(120)),
    (2500.0, 400, 1, 2.0, Z1 * math.sqrt(12.5)),
])
def test_mde(variance, n, sided, deff, expected):
    assert power.mde(variance, n, 0.05, 0.8, sided, deff) == pytest.approx(expected)


@pytest.mark.parametrize("variance, delta, sided, deff, alpha, pw, expected", [
    (900.0, 2.0, 2, 1.0, 0.05, 0.8, 1766),  # 7.8489 x 225 = 1765.998
    (1600.0, 2.0, 2, 1.5, 0.05, 0.8, 4710),  # 4709.3
    (900.0, 2.0, 1, 1.0, 0.05, 0.8, 1392),  # 6.1826 x 225 = 1391.08
    (1000.0, Z2, 2, 1.0, 0.05, 0.8, 1000),  # exactly 1000 up to floating-point rounding: not 1001
    (1000.0, 5.0, 2, 1.0, 0.01, 0.9, math.ceil((2.5758293 + 1.2815516) ** 2 * 40)),
])
def test_n_needed(variance, delta, sided, deff, alpha, pw, expected):
    assert power.n_needed(variance, delta, alpha, pw, sided, deff) == expected


@pytest.mark.parametrize("sided, alternative", [(2, "two-sided"), (1, "larger")])
def test_n_needed_agrees_with_statsmodels(sided, alternative):
    """statsmodels' one-sample normal power (ratio=0) with effect size delta / sigma gives the same n."""
    from statsmodels.stats.power import NormalIndPower

    for variance, delta in ((900.0, 2.0), (1600.0 * 1.5, 3.0), (250.0, 0.7)):
        n = NormalIndPower().solve_power(delta / math.sqrt(variance), None, 0.05, 0.8, ratio=0.0,
                                         alternative=alternative)
        assert power.n_needed(variance, delta, sided=sided) == math.ceil(n - 1e-6)
        assert power.achieved_power(delta, variance, math.ceil(n), sided=sided) >= 0.8


@pytest.mark.parametrize("m, icc", [(2, 0.3), (4, 0.05), (8, 0.2)])
def test_design_effect_is_kish_for_equal_clusters(m, icc):
    """Equal clusters: the variance ratio is 1 + (m - 1) ICC, ICC = (m eta^2 - 1) / (m - 1) from the same data."""
    rng = np.random.default_rng(m)
    shared = np.repeat(rng.normal(size=200) * math.sqrt(icc), m)
    d = shared + rng.normal(size=200 * m) * math.sqrt(1 - icc)
    clusters = np.repeat(np.arange(200), m)
    means = np.bincount(clusters, weights=d) / m
    eta2 = m * ((means - d.mean()) ** 2).sum() / ((d - d.mean()) ** 2).sum()
    assert power.design_effect(d, clusters) == pytest.approx(power.design_effect_from_icc(m, (m * eta2 - 1) / (m - 1)))
    assert power.design_effect(d, np.arange(d.size)) == pytest.approx(1.0)


def test_design_effect_is_compares_cluster_bootstrap_variance():
    """The variance the design effect implies is the one compare's cluster bootstrap draws (stats.py)."""
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 7, size=150)  # unequal clusters
    clusters = np.repeat(np.arange(150), sizes)
    hit = np.repeat(rng.random(150) < 0.2, sizes)
    d = np.where(rng.random(clusters.size) < np.where(hit, 0.4, 0.05), -1.0, 0.0) * 100
    deff, n = power.design_effect(d, clusters), d.size
    deviations = stats.bootstrap_deviations(d, clusters, 20000, np.random.default_rng(2))
    assert deviations.var() == pytest.approx(deff * d.var() / n, rel=0.05)
    assert deff > 1.3


def test_combine_is_the_variance_of_the_mean_of_tasks():
    parts = [(900.0, 20, 1.0), (1600.0, 20, 1.5), (400.0, 100, 2.0)]
    variance, n, deff = power.combine(parts)
    assert n == 140
    assert deff * variance / n == pytest.approx(sum(d * v / k for v, k, d in parts) / 9)
    assert power.combine([(900.0, 20, 1.3)]) == pytest.approx((900.0, 20, 1.3))


@pytest.mark.parametrize("args, message", [
    ((2.0, 1.5, 0.8, 2.0, 0.1), "--alpha must be between 0 and 1"),
    ((2.0, 0.0, 0.8, 2.0, 0.1), "--alpha must be between 0 and 1"),
    ((2.0, 0.05, 1.0, 2.0, 0.1), "--power must be between 0 and 1"),
    ((0.0, 0.05, 0.8, 2.0, 0.1), "--delta must be a positive number"),
    ((-1.0, 0.05, 0.8, 2.0, 0.1), "--delta must be a positive number"),
    ((2.0, 0.05, 0.8, 0.0, 0.1), "--budget must be a positive number"),
    ((2.0, 0.05, 0.8, 2.0, 1.5), "--flip-rate must be in (0, 1]"),
])
def test_settings_refused(args, message):
    with pytest.raises(power.CompareError, match=message.replace("(", r"\(").replace("]", r"\]")):
        power.check_settings(*args)


# --------------------------------------------------------------------------
# On lmms-eval output folders
# --------------------------------------------------------------------------

def test_measured_from_the_pair_by_hand(pair):
    report = power.power_report(pair[0], [pair[1]], downstream=["chartqa"])
    rows = report["tasks"]
    assert report["post"] == "post" and list(report["posts"]) == ["post"]
    assert {t: r["role"] for t, r in rows.items()} == {"chartqa": "downstream", "mmbench": "upstream",
                                                      "rsvqa": "upstream"}
    chart, mm, rs = rows["chartqa"], rows["mmbench"], rows["rsvqa"]
    assert (chart["n"], chart["clusters"], chart["design_effect"]) == (20, 20, 1.0)
    assert chart["flips"] == {"forgotten": 0, "learned": 6, "both_right": 2, "both_wrong": 12}
    assert chart["variance"] == pytest.approx(2100.0) and chart["variance_source"] == "measured"
    assert chart["mde"] == pytest.approx(Z2 * math.sqrt(105)) and chart["n_needed"] == 4121  # 7.8489 x 525
    assert chart["underpowered"] is None  # downstream: no budget
    assert mm["variance"] == pytest.approx(900.0)
    assert (mm["mde"], mm["mde_one_sided"]) == pytest.approx((18.7937, 16.6797), abs=1e-4)
    assert (mm["n_needed"], mm["n_needed_budget"], mm["underpowered"]) == (1766, 1392, True)
    assert (rs["n"], rs["clusters"], rs["cluster_key"]) == (20, 5, "image_id")
    assert rs["design_effect"] == pytest.approx(1.5) and rs["design_effect_source"] == "measured"
    assert rs["variance"] == pytest.approx(1600.0)
    assert rs["mde"] == pytest.approx(Z2 * math.sqrt(120)) and rs["mde_one_sided"] == pytest.approx(Z1 * math.sqrt(120))
    assert (rs["n_needed"], rs["clusters_needed"]) == (4710, 1178)  # 4709.3; 4710 / 4 questions per image
    e, f = report["E"], report["F"]
    assert e["tasks"] == ["chartqa"] and e["mde"] == pytest.approx(chart["mde"]) and e["delta"] == pytest.approx(30.0)
    # F = (mmbench + rsvqa) / 2: Var(F) = (900 / 20 + 1.5 x 1600 / 20) / 4 = (45 + 120) / 4 = 41.25
    assert (f["n"], f["clusters"]) == (40, 25)
    assert f["variance"] == pytest.approx(1250.0) and f["design_effect"] == pytest.approx(1.32)
    assert f["se"] == pytest.approx(math.sqrt(41.25)) and f["mde"] == pytest.approx(Z2 * math.sqrt(41.25))
    assert f["n_needed"] == 3238 and f["n_needed_per_task"] == {"mmbench": 1619, "rsvqa": 1619}  # 40 x 80.94
    assert f["underpowered"] is True and f["delta"] == pytest.approx(-15.0)
    assert report["settings"] == pytest.approx({"delta": 2.0, "alpha": 0.05, "power": 0.8, "budget": 2.0,
                                                "flip_rate": 0.1, "z_two_sided": Z2, "z_one_sided": Z1})


def test_variance_agrees_with_compares_bootstrap_of_the_same_pair(pair):
    """power's squared standard error is the variance of compare's bootstrap deviations on the same pair, and they
    count the same n and clusters."""
    from forgetbench.compare import CompareOptions, compare_runs

    rows = power.power_report(pair[0], [pair[1]], downstream=["chartqa"])["tasks"]
    compared = compare_runs(pair[0], [("post", pair[1])], ["chartqa"], ["mmbench", "rsvqa"],
                            CompareOptions(resamples=0)).report["tasks"]
    for task, row in rows.items():
        assert (row["n"], row["clusters"]) == (compared[task]["n"], compared[task]["clusters"])
        assert row["delta"] == pytest.approx(compared[task]["delta"])
    d = np.array([-100.0 if 6 <= i <= 9 else 0.0 for i in range(20)])
    deviations = stats.bootstrap_deviations(d, [i // 4 for i in range(20)], 40000, np.random.default_rng(0))
    assert deviations.var() == pytest.approx(rows["rsvqa"]["se"] ** 2, rel=0.03)  # 120 points^2


def test_assumed_without_post_by_hand(pair):
    """No post: 10 % flips split evenly, 1000 points^2; rsvqa's design effect from its pre scores (images 0 and 1
    right, image 2 half, images 3 and 4 wrong): (4 x 2^2) / (20 x 0.25) = 3.2."""
    report = power.power_report(pair[0], [], downstream=["chartqa"])
    assert report["post"] is None and "posts" not in report
    rows = report["tasks"]
    for task in ("chartqa", "mmbench"):
        assert rows[task]["variance"] == 1000.0 and rows[task]["variance_source"] == "assumed"
        assert rows[task]["mde"] == pytest.approx(Z2 * math.sqrt(50))
        assert rows[task]["delta"] is None
    rs = rows["rsvqa"]
    assert rs["design_effect"] == pytest.approx(3.2) and rs["design_effect_source"].startswith("pre scores")
    assert rs["mde"] == pytest.approx(Z2 * math.sqrt(160))
    assert "10%" in rs["variance_note"]
    half = power.power_report(pair[0], [], downstream=["chartqa"], flip_rate=0.05)
    assert half["tasks"]["mmbench"]["mde"] == pytest.approx(Z2 * math.sqrt(25))


def test_cider_mme_and_vqa_accuracy_by_hand(tmp_path):
    """test_compare_corpus's runs. OK-VQA per-document deltas -0.4, 0, -0.3, 0, 0: variance 0.05 - 0.14^2 =
    0.0304 = 304 points^2. CIDEr per-image deltas 0 and 750 points: variance 375^2. MME perception, stratified:
    OCR pair deltas -7.5 and +7.5 points (variance 56.25 over 2 pairs), colour one pair: Var = 28.125 points^2 on
    its 6 documents (the cognition pair is another metric's), which the stratified bootstrap of stats.py draws."""
    pre, post = upstream_runs(tmp_path)
    report = power.power_report(pre, [post], downstream=["ok_vqa_val2014"])
    okvqa, coco, mme = (report["tasks"][t] for t in ("ok_vqa_val2014", "coco2017_cap_val", "mme"))
    assert okvqa["variance"] == pytest.approx(304.0) and okvqa["flips"] is None and okvqa["n"] == 5
    assert (coco["n"], coco["clusters"], coco["design_effect"]) == (2, 2, 1.0)
    assert coco["variance"] == pytest.approx(375.0 ** 2)
    assert (mme["n"], mme["clusters"]) == (6, 3)
    assert mme["se"] ** 2 == pytest.approx(28.125) and mme["variance"] == pytest.approx(6 * 28.125)
    devs = stats.stratified_deviations([-7.5, 7.5, 10.0], ["OCR", "OCR", "color"], 40000, np.random.default_rng(0))
    assert devs.var() == pytest.approx(28.125, rel=0.03)
    assumed = power.power_report(pre, [], downstream=["ok_vqa_val2014"])["tasks"]
    assert assumed["coco2017_cap_val"]["mde"] is None and "pass --post" in assumed["coco2017_cap_val"]["variance_note"]
    assert assumed["ok_vqa_val2014"]["variance"] == 1000.0


def test_no_flip_plans_with_the_rule_of_three(tmp_path):
    pre = write_run(tmp_path / "pre", PRE)
    report = power.power_report(pre, [pre], upstream=["mmbench"], tasks=["mmbench"])
    row = report["tasks"]["mmbench"]
    assert row["variance_source"] == "rule of three" and row["variance"] == pytest.approx(3 / 20 * 1e4)
    assert report["E"] is None and report["F"]["mde"] == pytest.approx(row["mde"])


def test_cli_table_json_and_several_posts(pair, tmp_path, capsys):
    out = tmp_path / "power.json"
    other = write_run(tmp_path / "other", {"chartqa": 0.30, "mmbench": 0.90, "rsvqa": 0.50})
    code = power.main(["--pre", str(pair[0]), "--post", f"lora={pair[1]}", "--post", f"ia3={other}",
                       "--downstream", "chartqa", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "post 'lora'" in text and "post 'ia3'" in text and "measured from lora" in text
    assert "mmbench: underpowered" in text and "1392 documents would suffice" in text
    data = json.loads(out.read_text())
    assert data["schema"] == "forgetbench.power/1" and data["post"] == "lora" and list(data["posts"]) == ["lora", "ia3"]
    assert data["tasks"] == data["posts"]["lora"]["tasks"]
    for row in (*data["tasks"].values(), data["E"], data["F"]):
        assert {"n", "clusters", "design_effect", "variance", "mde", "mde_one_sided", "n_needed", "variance_source",
                "underpowered"} <= set(row)
    assert set(data["settings"]) >= {"delta", "alpha", "power", "budget"}
    # ia3: mmbench and rsvqa unchanged (rule of three), chartqa 2 -> 6 right
    assert data["posts"]["ia3"]["tasks"]["mmbench"]["variance_source"] == "rule of three"
    assert data["posts"]["ia3"]["tasks"]["chartqa"]["variance"] == pytest.approx((0.2 - 0.04) * 1e4)


def test_cli_without_post_prints_the_assumption(pair, capsys):
    assert power.main(["--pre", str(pair[0]), "--tasks", "mmbench,rsvqa", "--delta", "5"]) == 0
    text = capsys.readouterr().out
    assert "no --post: variance assumed (10% of documents flip" in text
    assert "delta 5 points" in text and any(line.startswith("F ") for line in text.splitlines())
    assert "role" in text and "delta" not in text.splitlines()[1]  # no observed change without a post


@pytest.mark.parametrize("argv, fragment", [
    ("--pre {pre} --alpha 1.5", "--alpha must be between 0 and 1"),
    ("--pre {pre} --power 0", "--power must be between 0 and 1"),
    ("--pre {pre} --delta 0", "--delta must be a positive number"),
    ("--pre {pre} --post {post} --delta -2", "--delta must be a positive number"),
    ("--post {post}", "--pre DIR is required"),
    ("--pre /no/such/folder", "--pre /no/such/folder: no such file or folder"),
    ("--pre {pre} --tasks mmbench,nope", "task(s) not found: nope"),
    ("--pre {pre} --downstream chartqa --upstream chartqa", "both downstream and upstream"),
    ("--pre {pre} --downstream chartqa --tasks mmbench", "--downstream: not among --tasks: chartqa"),
    ("--pre {pre} --metric nope=acc", "--metric: 'nope' is not among the planned tasks"),
    ("--pre {pre} --post a={post} --post a={post}", "--post: name used twice: a"),
])
def test_refusals_are_one_line(pair, capsys, tmp_path, argv, fragment):
    argv = argv.format(pre=pair[0], post=pair[1]).split() + ["--json", str(tmp_path / "x.json")]
    assert power.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not (tmp_path / "x.json").exists()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forgetbench power: error: ")
    assert fragment in lines[0]


def test_unpaired_post_is_refused_unless_allowed(pair, tmp_path, capsys):
    other = lmms_results(POST, n=24)
    other["configs"]["rsvqa"]["cluster_key"] = "image_id"
    folder = tmp_path / "short"
    write_output(folder, other)
    write_samples(folder / SUB, "rsvqa", [{**line, "image_id": f"img{line['doc_id'] // 4}"}
                                          for line in sample_lines(other, "rsvqa")])
    assert power.main(["--pre", str(pair[0]), "--post", str(folder)]) == 2
    assert "sample counts of 'chartqa' differ from --pre" in capsys.readouterr().err
    report = power.power_report(pair[0], [folder], allow_mismatch=True)
    assert report["tasks"]["mmbench"]["n"] == 20 and report["posts"]["post"]["mismatches"]


# --------------------------------------------------------------------------
# Simulation: the planned n gives the nominal power
# --------------------------------------------------------------------------

TRIALS = 10_000


@pytest.mark.slow
def test_simulated_power_at_the_planned_n():
    """0/1 metric, independent documents: 6 % right -> wrong, 4 % wrong -> right (true delta -2 points), variance
    0.0996 = 996 points^2, planned n = 1955. 10 000 simulated pre/post pairs, each tested with the two-sided paired
    z-test (and the one-sided test at the budget's n): the share that rejects is the nominal 0.8 within 3 points."""
    rng = np.random.default_rng(20260101)
    p10, p01 = 0.06, 0.04
    variance = power.paired_variance(p10, p01) * 100 ** 2
    n = power.n_needed(variance, 2.0)
    assert n == 1955
    found = {}
    for sided, size in ((2, n), (1, power.n_needed(variance, 2.0, sided=1))):
        counts = rng.multinomial(size, [p10, p01, 1 - p10 - p01], size=TRIALS)
        mean = (counts[:, 1] - counts[:, 0]) / size
        sd = np.sqrt(((counts[:, 0] + counts[:, 1]) / size - mean ** 2) * size / (size - 1))
        z = mean / (sd / np.sqrt(size))
        found[sided] = float(np.mean(np.abs(z) > 1.959963984540054) if sided == 2 else np.mean(z < -1.6448536269514722))
    print(f"\nindependent: n={n}, delta=2, trials={TRIALS}, power two-sided={found[2]:.4f}, one-sided={found[1]:.4f}")
    assert abs(found[2] - 0.8) < 0.03 and abs(found[1] - 0.8) < 0.03


@pytest.mark.slow
def test_simulated_power_with_clusters():
    """Images of 8 questions; 10 % of images are fragile (each question right -> wrong with probability 0.2, none
    back), the rest flip 3 % each way: true delta -2 points, Var(d) = 0.0736, within-image covariance 0.0036,
    design effect 1 + 7 x 0.0036 / 0.0736 = 1.342. A pilot study measures the variance and the design effect with
    paired_variance and design_effect; n_needed plans with them; 10 000 studies at that n, tested with the
    cluster-robust paired z-test (the variance compare's cluster bootstrap draws), reject at the nominal 0.8 within
    3 points. Planning without the design effect (1445 documents) falls well short."""
    rng = np.random.default_rng(7)
    m, share = 8, 0.10
    fragile, normal = np.array([0.20, 0.0, 0.80]), np.array([0.03, 0.03, 0.94])  # p10, p01, unchanged

    def studies(images: int, trials: int) -> np.ndarray:
        """Per image: (right -> wrong, wrong -> right) counts, shape (trials, images, 2)."""
        kind = rng.random((trials, images)) < share
        return rng.multinomial(m, np.where(kind[..., None], fragile, normal))[..., :2]

    pilot = studies(40_000, 1)[0]
    d = np.concatenate([np.repeat([-1.0, 1.0, 0.0], [a, b, m - a - b]) for a, b in pilot])
    clusters = np.concatenate([[i] * m for i in range(len(pilot))])
    variance = power.paired_variance(pilot[:, 0].sum(), pilot[:, 1].sum(), d.size) * 100 ** 2
    deff = power.design_effect(d, clusters)
    assert variance == pytest.approx(736.0, rel=0.02) and deff == pytest.approx(1 + 7 * 0.0036 / 0.0736, abs=0.04)

    def empirical_power(n_docs: int) -> float:
        images = math.ceil(n_docs / m)
        counts = studies(images, TRIALS)
        sums = (counts[..., 1] - counts[..., 0]).astype(float)
        mean = sums.sum(axis=1) / (m * images)
        var = ((sums - m * mean[:, None]) ** 2).sum(axis=1) / (m * images) ** 2 * images / (images - 1)
        return float(np.mean(np.abs(mean / np.sqrt(var)) > 1.959963984540054))

    n = power.n_needed(variance, 2.0, design_effect=deff)
    planned, naive = empirical_power(n), empirical_power(power.n_needed(variance, 2.0))
    print(f"\nclustered: m={m}, deff={deff:.3f}, n={n} ({math.ceil(n / m)} images), delta=2, trials={TRIALS}, "
          f"power={planned:.4f}; without the design effect n={power.n_needed(variance, 2.0)}, power={naive:.4f}")
    assert abs(planned - 0.8) < 0.03
    assert naive < 0.74
