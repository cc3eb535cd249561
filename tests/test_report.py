"""The report reads in a minute (issue 22): the recommended arm and its rule first, each change worded by what the
study can show, --budget flagging what is underpowered with the documents that would suffice, the E-versus-F plot's
labels apart, and ``forgetbench compare --html`` writing the study's report for any pre/post runs, escaped."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_compare import DOWN, POST, PRE, UP, lmms_results, sample_lines, write_output, write_samples
from test_compare_features import SUB, checkpoint
from test_power import POST as POWER_POST
from test_power import PRE as POWER_PRE
from test_power import write_run

from forgetbench.compare import CompareOptions, compare_runs, html, main, plots, power, recommend, render

HOSTILE = "<img src=x onerror=alert(1)>"
FORMULA = '=HYPERLINK("x")'


# -- the recommendation's rule, table-driven ----------------------------------------------------------------------


def arm(e, f, o=None, e_ci=None, f_ci=None):
    return {"E": e, "F": f, "O": e + f if o is None else o, "E_ci": e_ci, "F_ci": f_ci}


CASES = {
    # name: (arms, budget, recommended, runner-up, qualifying)
    "the highest E among the arms within the budget": (
        {"full": arm(80, -10, f_ci=[-12, -8], e_ci=[76, 84]), "wise": arm(60, -1, f_ci=[-3, 1], e_ci=[55, 65]),
         "replay": arm(70, -1.5, f_ci=[-2.5, -0.5], e_ci=[66, 74])},
        2.0, "replay", "wise", ["wise", "replay"]),
    "F at the budget's edge qualifies (upper end == -budget)": (
        {"a": arm(50, -4, f_ci=[-6, -2]), "b": arm(40, 0, f_ci=[-1, 1])}, 2.0, "a", "b", ["a", "b"]),
    "a tie on E (the other's interval holds the best E) goes to the higher O": (
        {"b": arm(70, -1, o=69, e_ci=[65, 75], f_ci=[-2, 0]), "c": arm(72, -12, o=60, e_ci=[68, 76], f_ci=[-15, 0])},
        2.0, "b", "c", ["b", "c"]),
    "an interval that does not reach the best E is no tie": (
        {"b": arm(70, -1, o=90, e_ci=[65, 71.9], f_ci=[-2, 0]), "c": arm(72, -12, o=60, e_ci=[68, 76], f_ci=[-15, 0])},
        2.0, "c", "b", ["b", "c"]),
    "none qualifies: the least forgetting among those whose E interval holds the best E": (
        {"full": arm(80, -20, e_ci=[75, 85], f_ci=[-25, -15]), "top": arm(78, -10, e_ci=[74, 82], f_ci=[-13, -7]),
         "lora": arm(50, -5, e_ci=[45, 55], f_ci=[-8, -3])},
        2.0, "top", "full", []),
    "a larger budget lets more arms qualify": (
        {"full": arm(80, -20, e_ci=[75, 85], f_ci=[-25, -15]), "top": arm(78, -10, e_ci=[74, 82], f_ci=[-13, -7]),
         "lora": arm(50, -5, e_ci=[45, 55], f_ci=[-8, -3])},
        10.0, "top", "lora", ["top", "lora"]),
    "without intervals F itself is compared and no E ties": (
        {"a": arm(60, -3), "b": arm(59.9, -1), "c": arm(70, -2)}, 2.0, "c", "b", ["b", "c"]),
    "equal E and O: the first on the command line": (
        {"x": arm(50, -1, f_ci=[-2, 0]), "y": arm(50, -1, f_ci=[-2, 0])}, 2.0, "x", "y", ["x", "y"]),
    "one arm within the budget": ({"lora": arm(40, -1, f_ci=[-3, 0.5])}, 2.0, "lora", None, ["lora"]),
    "one arm beyond the budget": ({"full": arm(80, -30, f_ci=[-35, -25])}, 2.0, "full", None, []),
}


@pytest.mark.parametrize("case", CASES)
def test_the_recommendation_follows_its_rule(case):
    arms, budget, expected, runner_up, qualifying = CASES[case]
    pick = recommend.recommend(arms, budget)
    assert (pick["arm"], pick["runner_up"], pick["qualifying"]) == (expected, runner_up, qualifying)
    assert pick["rule"] == recommend.rule_text(budget) and f"-{budget:g} points" in pick["rule"]
    assert pick["reason"].startswith((expected, "No arm")) and pick["reason"].endswith(".")


def test_the_reason_says_why_in_one_sentence():
    said = {case: recommend.recommend(CASES[case][0], CASES[case][1])["reason"] for case in CASES}
    assert said["the highest E among the arms within the budget"] == (
        "replay has the highest E (+70.0) of the 2 arms whose F is not significantly below -2 points (F -1.5, "
        "interval up to -0.5).")
    assert said["a tie on E (the other's interval holds the best E) goes to the higher O"] == (
        "b has the highest O (+69.0) of the arms within the budget whose E ties with the best E +72.0 (b, c: their "
        "E intervals hold it).")
    assert said["none qualifies: the least forgetting among those whose E interval holds the best E"] == (
        "No arm's F is within the budget (every F is significantly below -2 points); top forgets least (F -10.0, "
        "interval up to -7.0) of the 2 arms whose E interval holds the best E +80.0.")
    assert said["one arm within the budget"] == (
        "lora meets the rule: its F is not significantly below -2 points (F -1.0, interval up to +0.5).")
    assert said["one arm beyond the budget"] == (
        "full does not meet the rule: its F is significantly below -2 points (F -30.0, interval up to -25.0); it is "
        "the only arm.")
    assert all(text.count(". ") == 0 for text in said.values())  # one sentence each


def test_the_rule_is_the_documented_one():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert "## The recommendation" in doc and recommend.rule_text(2.0) in " ".join(doc.split())


# -- wording by what the study can show ---------------------------------------------------------------------------


def _compare(tmp_path, pre, post, *extra) -> dict:
    pre_dir, post_dir = write_output(tmp_path / "pre", pre), write_output(tmp_path / "post", post)
    out = tmp_path / "o"
    assert main(["--pre", str(pre_dir), "--post", f"lora={post_dir}", "--downstream", DOWN, "--upstream", UP,
                 "--resamples", "2000", "--out", str(out), *extra]) == 0
    return json.loads((out / "compare.json").read_text())


def test_a_change_whose_interval_holds_zero_is_worded_not_significant_with_its_detectable_size(tmp_path, capsys):
    data = _compare(tmp_path, lmms_results(PRE), lmms_results(POST))  # F = -5, interval [-12.5, 0]
    assert data["F_ci"][1] == pytest.approx(0.0) and data["F_significant"] is False
    # mmbench: 2 of 20 right -> wrong (Var 900 points^2), pope: nothing changed (rule of three, 3/20 x 100^2 = 1500);
    # Var(F) = (900 / 20 + 1500 / 20) / 4 = 30, F's MDE = 2.8016 x sqrt(30) = 15.34
    assert data["F_mde"] == pytest.approx(power.z_sum() * 30 ** 0.5)
    assert data["verdict"]["F"] == "forgot 5.0 points (not significant; this study detects 15.3 or more)"
    assert data["verdict"]["E"] == "gained 40.0 points (significant)" and data["E_significant"] is True
    sentence = ("lora gained 40.0 points (significant) on the target tasks; on general tasks it forgot 5.0 points "
                "(not significant; this study detects 15.3 or more), significantly worse on 0 of 2 upstream tasks")
    printed = capsys.readouterr().out
    markdown = (tmp_path / "o" / "compare.md").read_text()
    assert sentence in printed and sentence in markdown
    assert "of general ability" not in printed + markdown


def test_a_significant_change_says_so_without_a_detectable_size(tmp_path, capsys):
    post = dict(POST, mmbench=0.50, pope=0.30)  # 8 and 4 of 20 right -> wrong: F = (-40 - 20) / 2 = -30
    data = _compare(tmp_path, lmms_results(PRE), lmms_results(post))
    assert data["F"] == pytest.approx(-30.0) and data["F_ci"][1] < 0 and data["F_significant"] is True
    assert data["verdict"]["F"] == "forgot 30.0 points (significant)"
    assert "on general tasks it forgot 30.0 points (significant), significantly worse on 2 of 2 upstream tasks" in \
        capsys.readouterr().out


def test_an_interval_that_ends_at_zero_up_to_rounding_is_not_significant(tmp_path):
    """The lab's case: 1 of 24 documents of one of four upstream tasks went right -> wrong. F's interval ends at 0 in
    exact arithmetic and at -1.1e-15 in floats (estimate + quantile of resample - estimate); that is no evidence of
    forgetting."""
    pre = {"d": 0.0, "u1": 1.0, "u2": 23 / 24, "u3": 23 / 24, "u4": 9 / 24}
    post = {"d": 1 / 24, "u1": 1.0, "u2": 23 / 24, "u3": 23 / 24, "u4": 8 / 24}
    runs = [write_output(tmp_path / side, lmms_results(scores, n=24))
            for side, scores in (("pre", pre), ("post", post))]
    report = compare_runs(runs[0], [("lora", runs[1])], ["d"], ["u1", "u2", "u3", "u4"],
                          CompareOptions(resamples=2000)).report
    assert report["F_ci"][1] == pytest.approx(0.0, abs=1e-12)
    assert report["F_significant"] is False and "(not significant; this study detects" in report["verdict"]["F"]
    assert render.arm_sentence("lora", report).endswith("significantly worse on 0 of 4 upstream tasks")
    assert recommend.qualifies({"F": -2.0, "F_ci": [-3.0, -2.0 - 1e-15]}, 2.0)
    assert recommend.holds({"E": 4.2, "E_ci": [4.2 + 1e-15, 12.5]}, 4.2)


# -- --budget: underpowered, and the documents that would suffice -------------------------------------------------


@pytest.fixture
def power_pair(tmp_path):
    """test_power's pair: chartqa downstream; mmbench (Var 900) and rsvqa (Var 1600, 4 questions per image, deff 1.5)
    upstream, 20 documents each (docs/power.md, "Reading the table")."""
    return write_run(tmp_path / "pre", POWER_PRE), write_run(tmp_path / "post", POWER_POST)


def test_budget_flags_what_is_underpowered_and_how_many_documents_would_suffice(power_pair, tmp_path, capsys):
    pre, post = power_pair
    assert main(["--pre", str(pre), "--post", str(post), "--downstream", "chartqa", "--upstream", "mmbench,rsvqa",
                 "--resamples", "200", "--json", str(tmp_path / "c.json")]) == 0
    data = json.loads((tmp_path / "c.json").read_text())
    tasks = data["tasks"]
    # the numbers of docs/power.md's table, computed by compare from the same pair
    assert [round(tasks[t]["mde"], 2) for t in ("chartqa", "mmbench", "rsvqa")] == [28.71, 18.79, 30.69]
    assert [round(tasks[t]["mde_one_sided"], 2) for t in ("mmbench", "rsvqa")] == [16.68, 27.24]
    assert (tasks["chartqa"]["underpowered"], tasks["mmbench"]["underpowered"], tasks["rsvqa"]["underpowered"]) == (
        None, True, True)
    assert (tasks["mmbench"]["n_needed_budget"], tasks["rsvqa"]["n_needed_budget"]) == (1392, 3710)
    assert round(data["F_mde"], 2) == 17.99 and round(data["F_mde_one_sided"], 2) == 15.97
    assert data["F_underpowered"] is True and data["F_n_needed_budget"] == 2551
    assert data["F_n_needed_per_task"] == {"mmbench": 1276, "rsvqa": 1276}
    assert data["power"] == {"alpha": pytest.approx(0.05), "power": 0.8, "budget": 2.0}
    printed = capsys.readouterr().out
    assert ("F is underpowered: it detects 15.97 points one-sided, over the budget of 2; about 2551 documents would "
            "suffice (mmbench 1276, rsvqa 1276)") in printed
    assert "yes (1392 docs)" in printed and "yes (3710 docs)" in printed
    # one source of truth: forgetbench power on the same pair says the same
    planned = power.power_report(pre, [("post", post)], downstream=["chartqa"], upstream=["mmbench", "rsvqa"])
    for task in ("chartqa", "mmbench", "rsvqa"):
        for key in ("mde", "mde_one_sided", "n_needed_budget", "underpowered"):
            assert tasks[task][key] == pytest.approx(planned["tasks"][task][key]), (task, key)
    assert data["F_mde"] == pytest.approx(planned["F"]["mde"])


def test_a_larger_budget_flags_less(power_pair, tmp_path):
    comparison = compare_runs(power_pair[0], [("post", power_pair[1])], ["chartqa"], ["mmbench", "rsvqa"],
                              CompareOptions(resamples=200, budget=20.0))
    tasks = comparison.report["tasks"]
    assert tasks["mmbench"]["underpowered"] is False  # 16.68 one-sided <= 20
    # rsvqa: 27.24 one-sided > 20; ceil(2.4865^2 x 1.5 x 1600 / 20^2) = ceil(37.1) = 38 documents
    assert tasks["rsvqa"]["underpowered"] is True and tasks["rsvqa"]["n_needed_budget"] == 38
    assert comparison.report["F_underpowered"] is False and comparison.report["power"]["budget"] == 20.0
    assert "20 points" in comparison.report["recommendation"]["rule"]


@pytest.mark.parametrize("budget", ["0", "-1", "nan"])
def test_a_budget_that_is_not_a_positive_number_is_refused(tmp_path, budget, capsys):
    pre, post = write_output(tmp_path / "pre", lmms_results(PRE)), write_output(tmp_path / "post", lmms_results(POST))
    assert main(["--pre", str(pre), "--post", str(post), "--downstream", DOWN, "--upstream", UP, "--budget",
                 budget]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"forgetbench compare: error: --budget must be a positive number of points, got {float(budget)!r}"]


# -- compare --html ------------------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Tags with their attributes, and the text of the body in order."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.in_body = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.in_body = self.in_body or tag == "body"

    def handle_data(self, data):
        if self.in_body and data.strip():
            self.text.append(" ".join(data.split()))


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def png_url(color=(200, 30, 30)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def hostile_runs(root: Path) -> tuple[Path, Path]:
    """test_compare's worked example, in a folder whose name is markup, with a question that is a formula, an answer
    that is markup, and the documents' images logged as lmms-eval 0.7.3 logs them (``input_media``)."""
    pre, post = lmms_results(PRE), lmms_results(POST)
    folders = []
    for side, results in (("pre", pre), ("post", post)):
        folder = write_output(root / HOSTILE / side, results)
        lines = sample_lines(results, "mmbench")
        for line in lines:
            line["input_media"] = [png_url()]
            if line["doc_id"] == 16:
                line["input"] = FORMULA
            if side == "post" and line["doc_id"] == 17:
                line["filtered_resps"] = HOSTILE
        write_samples(folder / SUB, "mmbench", lines)
        folders.append(folder)
    return folders[0], folders[1]


def test_compare_html_opens_with_the_recommendation_and_escapes_what_runs_say(tmp_path):
    pre, post = hostile_runs(tmp_path)
    page_file = tmp_path / "report.html"
    assert main(["--pre", str(pre), "--post", str(post), "--downstream", DOWN, "--upstream", UP, "--resamples", "500",
                 "--html", str(page_file)]) == 0
    text = page_file.read_text(encoding="utf-8")
    page = parse(text)
    assert page.text[0] == "Recommendation: post"
    assert page.text[1] == ("post meets the rule: its F is not significantly below -2 points (F -5.0, interval up to "
                            "+0.0).")
    assert page.text[2] == f"Rule: {recommend.rule_text(2.0)}."
    body = " ".join(page.text)
    assert "forgot 5.0 points (not significant; this study detects 15.3 or more)" in body
    for heading in ("Headline", "E versus F", "Per task", "Samples that flipped", "Provenance"):
        assert heading in page.text, heading
    # no live markup from the runs: one script (the template's filter), no event handler, images only inlined PNG
    assert [tag for tag, _ in page.tags].count("script") == 1
    assert not [(tag, attrs) for tag, attrs in page.tags if any(name.startswith("on") for name in attrs)]
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert images and all(attrs["src"].startswith("data:image/png;base64,") for attrs in images)
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and HOSTILE not in text
    assert FORMULA in body and "=HYPERLINK(&#34;x&#34;)" in text  # shown as the text it is
    assert f"{tmp_path}/{HOSTILE}/pre" in body  # the run's path, as text
    # the flipped documents carry their logged image, as a thumbnail
    thumbs = [attrs for tag, attrs in page.tags if tag == "img" and attrs.get("class") == "thumb"]
    assert [attrs["alt"] for attrs in thumbs] == ["doc 16", "doc 17"]
    assert "http://" not in text and "https://" not in text


def test_a_hostile_method_name_is_text_in_every_part_of_the_page(tmp_path):
    pre, post = hostile_runs(tmp_path)
    comparison = compare_runs(pre, [(HOSTILE, post), (FORMULA, pre)], DOWN.split(","), UP.split(","),
                              CompareOptions(resamples=200))
    text = comparison.html(title=f"study of {HOSTILE}")
    page = parse(text)
    assert page.text[0] == f"Recommendation: {HOSTILE}"
    assert not [(tag, attrs) for tag, attrs in page.tags if any(name.startswith("on") for name in attrs)]
    assert [tag for tag, _ in page.tags].count("img") == 1 + 2  # the plot and the two flipped documents' thumbnails
    assert HOSTILE not in text and text.count("&lt;img src=x onerror=alert(1)&gt;") >= 5


def test_the_html_output_is_refused_inside_an_input_run(tmp_path, capsys):
    pre, post = write_output(tmp_path / "pre", lmms_results(PRE)), write_output(tmp_path / "post", lmms_results(POST))
    assert main(["--pre", str(pre), "--post", str(post), "--downstream", DOWN, "--upstream", UP, "--html",
                 str(post / "r.html")]) == 2
    assert "--html " in capsys.readouterr().err and not (post / "r.html").exists()


def test_the_probe_curve_of_a_checkpoint_reaches_compare_json_and_the_page(tmp_path):
    folder = Path(checkpoint(tmp_path, "lora", "Qwen/Qwen2-VL-2B-Instruct"))
    manifest = json.loads((folder / "forgetbench_manifest.json").read_text())
    manifest["probe"] = {"every": 5, "limit": 32, "budget": None, "stopped_at_step": None, "restored_step": None,
                         "reason": None, "log": "forgetting_probe.jsonl"}
    (folder / "forgetbench_manifest.json").write_text(json.dumps(manifest))
    records = [{"step": s, "E": 10.0 * s, "F": -1.0 * s, "F_ci": [-1.5 * s, -0.5 * s], "scores": {}}
               for s in (0, 5, 10)]
    (folder / "forgetting_probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    pre = write_output(tmp_path / "pre", lmms_results(PRE))
    post = write_output(tmp_path / "post", lmms_results(POST, pretrained=str(folder)))
    comparison = compare_runs(pre, [("lora", post)], DOWN.split(","), UP.split(","), CompareOptions(resamples=0))
    probe = comparison.report["probe"]
    assert probe["every"] == 5 and [r["step"] for r in probe["curve"]] == [0, 5, 10]
    assert probe["curve"][2] == {"step": 10, "E": 100.0, "F": -10.0, "F_ci": [-15.0, -5.0]}
    page = parse(comparison.html())
    assert "Forgetting probe during training" in page.text
    assert [attrs["alt"] for tag, attrs in page.tags if tag == "img"] == ["E versus F per arm",
                                                                          "probe F per training step"]
    no_probe = compare_runs(pre, [("x", write_output(tmp_path / "p2", lmms_results(POST)))], DOWN.split(","),
                            UP.split(","), CompareOptions(resamples=0))
    assert no_probe.report["probe"] is None and "Forgetting probe during training" not in no_probe.html()


def test_answer_kinds_are_shown_as_changes():
    rows = html.kind_changes([{"task": "forgetbench_lab_shape", "pre": {"correct": 20, "downstream_label": 0},
                               "arms": {"full_st": {"correct": 12, "downstream_label": 37},
                                        "lora": {"correct": 20, "downstream_label": 0}}}],
                             ["correct", "downstream_label"])
    assert [(r["arm"], [text for _, text, _ in r["cells"]]) for r in rows] == [
        ("full_st", ["20 → 12 (-8)", "0 → 37 (+37)"]), ("lora", ["20 → 20 (0)", "0 → 0 (0)"])]
    assert [tone for _, _, tone in rows[0]["cells"]] == ["neg", "neg"]


def test_a_logged_image_url_is_never_fetched_and_a_bad_one_gives_no_thumbnail():
    assert html.media_thumbnail("https://example.org/cat.png") is None
    assert html.media_thumbnail("/no/such/file.png") is None
    assert html.media_thumbnail("data:image/png;base64," + base64.b64encode(b"not a png").decode()) is None
    assert html.media_thumbnail(png_url()).startswith("data:image/png;base64,")


# -- the E-versus-F plot's labels ----------------------------------------------------------------------------------

# The default lab study's seven points (E, F) and interval half-widths of the size its 95 % intervals have.
SEVEN = {"lora": (77.7, -25.4), "full_st": (86.7, -40.8), "full_st@wise-0.25": (33.0, -0.9),
         "full_st@wise-0.5": (65.3, -5.9), "full_st@wise-0.75": (78.0, -22.9), "top_layers": (77.7, -14.9),
         "full_st+replay": (87.3, -4.5)}


def _boxes_apart(methods: dict, front: list[str]) -> None:
    from matplotlib.text import Text

    fig, labels = plots.ef_figure(methods, front)
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    fig.canvas.draw()
    for label in labels.values():
        label.update_positions(renderer)
    boxes = {name: Text.get_window_extent(label, renderer) for name, label in labels.items()}  # the text, no line
    assert set(boxes) == set(methods)
    radius = 3.0 * fig.dpi / 72  # markersize 6 points
    for name, (e, f) in ((n, (m["E"], m["F"])) for n, m in methods.items()):
        x, y = ax.transData.transform((e, f))
        for other, box in boxes.items():
            assert not (box.x0 < x + radius and x - radius < box.x1 and box.y0 < y + radius and y - radius < box.y1), \
                f"label {other} covers the marker of {name}"
    names = list(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not boxes[a].overlaps(boxes[b]), f"labels {a} and {b} overlap"
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
               for box in boxes.values())


@pytest.mark.parametrize("half", [0.0, 3.0])
def test_labels_of_the_default_studys_seven_points_never_overlap(half):
    methods = {n: {"E": e, "F": f, **({"E_ci": [e - half, e + half], "F_ci": [f - half, f + half]} if half else {})}
               for n, (e, f) in SEVEN.items()}
    _boxes_apart(methods, ["full_st+replay", "full_st@wise-0.5", "full_st@wise-0.25"])


def test_labels_of_coincident_points_are_placed_apart_and_deterministically():
    methods = {name: {"E": 50.0 + i * 0.05, "F": -10.0 + i * 0.05} for i, name in enumerate(["a", "bb", "ccc", "dddd"])}
    _boxes_apart(methods, [])
    first, second = (plots.ef_figure(methods, [])[1] for _ in range(2))
    assert [a.xyann for a in first.values()] == [a.xyann for a in second.values()]


# -- in a real browser ---------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PDFTOTEXT = shutil.which("pdftotext")


@pytest.mark.skipif(not (CHROMIUM and PDFTOTEXT), reason="needs Debian's chromium and poppler-utils (make test "
                                                          "installs them where it can: see Makefile)")
def test_the_compare_report_reads_right_in_a_real_browser(tmp_path):
    pre = write_output(tmp_path / "pre", lmms_results(PRE))
    posts = {"lora": write_output(tmp_path / "lora", lmms_results(POST)),
             "full": write_output(tmp_path / "full", lmms_results(dict(POST, mmbench=0.50, pope=0.30)))}
    page_file = tmp_path / "report.html"
    assert main(["--pre", str(pre), *(f"--post={n}={p}" for n, p in posts.items()), "--downstream", DOWN,
                 "--upstream", UP, "--resamples", "1000", "--html", str(page_file)]) == 0
    pdf = tmp_path / "report.pdf"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([CHROMIUM, *flags, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page_file.as_uri()],
                   capture_output=True, timeout=120, check=True, env={**os.environ, "HOME": str(tmp_path)})
    text = " ".join(subprocess.run([PDFTOTEXT, "-layout", str(pdf), "-"], capture_output=True, text=True,
                                   check=True).stdout.split())
    assert text.startswith("Recommendation: lora lora is the only arm whose F is not significantly below -2 points")
    assert "Rule: among the arms whose F is not significantly below -2 points" in text
    assert "Runner-up: full" in text
    assert "forgot 5.0 points (not significant; this study detects 15.3 or more)" in text
    assert "forgot 30.0 points (significant)" in text
