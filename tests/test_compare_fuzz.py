"""Fuzz: 1000 generated malformed or mismatched pre/post pairs. Every one must give exit 2 and exactly one line on
stderr, never a traceback, never an output file."""

from __future__ import annotations

import copy
import json
import math
import random

from test_compare import RESULTS_NAME, lmms_results, sample_lines

from forgetbench.compare import main

SCORES = {"pre": {"a": 0.2, "b": 0.6, "c": 0.8}, "post": {"a": 0.8, "b": 0.4, "c": 0.8}}
SAMPLES_PREFIX = RESULTS_NAME[: -len("results.json")] + "samples_"
CASES = 1000


def base_state() -> dict:
    state = {}
    for side, scores in SCORES.items():
        results = lmms_results(scores, n=5)
        state[side] = {"results": results, "samples": {t: sample_lines(results, t) for t in scores}, "raw": {}}
    return state


def _task(rng):
    return rng.choice(sorted(SCORES["pre"]))


def _side(rng):
    return rng.choice(["pre", "post"])


def _line(state, rng):
    side, task = _side(rng), _task(rng)
    lines = state[side]["samples"][task]
    return lines, rng.randrange(len(lines))


# Each mutator spoils the state in place; rng picks side, task, line, position, type.
def truncate_results(state, rng):
    side = _side(rng)
    text = json.dumps(state[side]["results"])
    state[side]["raw"][RESULTS_NAME] = text[: rng.randrange(1, len(text))].encode()


def truncate_sample_line(state, rng):
    side, task = _side(rng), _task(rng)
    lines = [json.dumps(x) for x in state[side]["samples"][task]]
    i = rng.randrange(len(lines))
    lines[i] = lines[i][: rng.randrange(0, len(lines[i]))]
    state[side]["raw"][f"{SAMPLES_PREFIX}{task}.jsonl"] = ("\n".join(lines) + "\n").encode()


def invalid_utf8(state, rng):
    side = _side(rng)
    name = rng.choice([RESULTS_NAME, f"{SAMPLES_PREFIX}{_task(rng)}.jsonl"])
    state[side]["raw"][name] = b'{"results": "\xff\xfe"}'


def deep_nesting(state, rng):
    state[_side(rng)]["raw"][RESULTS_NAME] = b"[" * 100000 + b"]" * 100000


def drop_results_key(state, rng):
    results = state[_side(rng)]["results"]
    key = rng.choice(["results", "n-samples", "versions"])
    if key == "results":
        del results["results"]
    else:
        del results[key][_task(rng)]


def drop_metric(state, rng):
    del state[_side(rng)]["results"]["results"][_task(rng)]["exact_match,none"]


def drop_sample_key(state, rng):
    lines, i = _line(state, rng)
    del lines[i][rng.choice(["doc_id", "input", "target", "exact_match"])]


def bad_number(state, rng):
    value = rng.choice([math.nan, math.inf, -math.inf, "0.5", None, True, [0.5], {"v": 1}, 1.5, -0.1, 10**400])
    state[_side(rng)]["results"]["results"][_task(rng)]["exact_match,none"] = value


def bad_sample_value(state, rng):
    lines, i = _line(state, rng)
    lines[i]["exact_match"] = rng.choice([math.nan, math.inf, "1", None, [1.0], {"s": 1}, 1 - lines[i]["exact_match"]])


def duplicate_doc_id(state, rng):
    lines, i = _line(state, rng)
    lines[i]["doc_id"] = lines[(i + rng.randrange(1, len(lines))) % len(lines)]["doc_id"]


def bad_doc_id(state, rng):
    lines, i = _line(state, rng)
    lines[i]["doc_id"] = rng.choice([str(lines[i]["doc_id"]), float(lines[i]["doc_id"]) + 0.5, None, True, [1]])


def renumber_doc(state, rng):
    lines = state["post"]["samples"][_task(rng)]
    lines[rng.randrange(len(lines))]["doc_id"] = 100 + rng.randrange(100)


def change_input(state, rng):
    lines = state["post"]["samples"][_task(rng)]
    line = lines[rng.randrange(len(lines))]
    line[rng.choice(["input", "target"])] = rng.choice(["changed", 7, None, ["x"]])


def drop_sample_line(state, rng):
    lines, i = _line(state, rng)
    del lines[i]


def drop_sample_file(state, rng):
    del state[_side(rng)]["samples"][_task(rng)]


def extra_task(state, rng):
    results = state[_side(rng)]["results"]
    results["results"]["extra"] = {"alias": "extra", "exact_match,none": 0.5}


def config_differs(state, rng):
    key = rng.choice(["limit", "offset"])
    state["post"]["results"]["config"][key] = rng.randrange(1, 50)


def version_differs(state, rng):
    state[_side(rng)]["results"]["versions"][_task(rng)] = rng.choice([1.0, "2", None])


def count_differs(state, rng):
    counts = state[_side(rng)]["results"]["n-samples"][_task(rng)]
    counts[rng.choice(["original", "effective"])] += rng.randrange(1, 5)


def wrong_type(state, rng):
    results = state[_side(rng)]["results"]
    where = rng.choice(["results", "task", "config", "n-samples", "configs", "higher_is_better", "versions", "meta"])
    junk = rng.choice([[], "x", 3, None, [1, 2]])
    if where == "task":
        results["results"][_task(rng)] = junk
    elif where == "meta":
        results["configs"][_task(rng)]["metadata"] = {"forgetbench": rng.choice([[], "x", 3])}
    else:
        results[where] = junk if junk is not None or where == "results" else []


def sample_line_type(state, rng):
    lines, i = _line(state, rng)
    lines[i] = rng.choice([[1, 2], "line", 3, None])


def lower_is_better(state, rng):
    state[_side(rng)]["results"]["higher_is_better"][_task(rng)] = {"exact_match": False}


def top_level_not_object(state, rng):
    state[_side(rng)]["raw"][RESULTS_NAME] = rng.choice([b"[]", b"3", b'"x"', b"null", b""])


MUTATORS = [truncate_results, truncate_sample_line, invalid_utf8, deep_nesting, drop_results_key, drop_metric,
            drop_sample_key, bad_number, bad_sample_value, duplicate_doc_id, bad_doc_id, renumber_doc, change_input,
            drop_sample_line, drop_sample_file, extra_task, config_differs, version_differs, count_differs,
            wrong_type, sample_line_type, lower_is_better, top_level_not_object]


def write_state(root, state) -> dict:
    dirs = {}
    for side, parts in state.items():
        folder = root / side
        folder.mkdir(parents=True)
        files = {RESULTS_NAME: json.dumps(parts["results"]).encode()}
        for task, lines in parts["samples"].items():
            files[f"{SAMPLES_PREFIX}{task}.jsonl"] = "".join(json.dumps(x) + "\n" for x in lines).encode()
        files.update(parts["raw"])
        for name, data in files.items():
            (folder / name).write_bytes(data)
        dirs[side] = folder
    return dirs


def test_base_state_is_valid(tmp_path, capsys):
    dirs = write_state(tmp_path, base_state())
    assert main(["--pre", str(dirs["pre"]), "--post", str(dirs["post"]), "--downstream", "a",
                 "--upstream", "b,c", "--resamples", "100"]) == 0


def test_fuzz_malformed_and_mismatched_inputs(tmp_path, capsys):
    rng = random.Random(20261102)
    template = base_state()
    seen = set()
    for case in range(CASES):
        state = copy.deepcopy(template)
        mutations = [rng.choice(MUTATORS) for _ in range(rng.choice([1, 1, 2]))]
        for mutate in mutations:
            try:
                mutate(state, rng)
            except (KeyError, TypeError, IndexError):  # an earlier mutation removed what this one edits
                pass
        root = tmp_path / f"c{case}"
        dirs = write_state(root, state)
        out, report = root / "out", root / "report.json"
        rc = main(["--pre", str(dirs["pre"]), "--post", str(dirs["post"]), "--downstream", "a", "--upstream",
                   "b,c", "--resamples", "100", "--json", str(report), "--out", str(out)])
        captured = capsys.readouterr()
        names = [m.__name__ for m in mutations]
        assert rc == 2, (case, names, captured.out[-300:])
        assert captured.err.count("\n") == 1 and captured.err.startswith("forgetbench compare: error: "), \
            (case, names, captured.err)
        assert "Traceback" not in captured.err and captured.out == ""
        assert not out.exists() and not report.exists() and not list(root.glob(".*")), (case, names)
        seen.update(names)
    assert seen == {m.__name__ for m in MUTATORS}
