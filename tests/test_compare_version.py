"""A commit between the two runs must not break the pairing (issue 20, item 7).

lmms-eval 0.7.3 records ``lmms_eval_version`` as ``branch@commit`` of ``git describe`` run in site-packages: with a
virtual environment inside a repository, that repository's commit. ``--model forgetbench`` records the installed
lmms-eval distribution's version beside the run, and compare pairs on that (docs/metrics.md, "The lmms-eval
version"): the recorded strings are then listed, not compared.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import lmms_eval_runs
from test_compare import POST, PRE, invoke, lmms_results

from forgetbench.compare import main, pairing
from forgetbench.compare import runs as run_files

SETTINGS = " (--allow-mismatch accepts it and lists it in the report)"


def pair(pre_version: str | None, post_version: str | None, *, pre_recorded="main@aaaa111",
         post_recorded="main@bbbb222"):
    """Hand-written runs identical but for ``lmms_eval_version``; ``*_version``: the installed lmms-eval version
    the wrapper's sidecar records (None: no sidecar, a run made by another wrapper)."""
    pre, post = lmms_results(PRE), lmms_results(POST)
    pre["lmms_eval_version"], post["lmms_eval_version"] = pre_recorded, post_recorded
    return pre, post, pre_version, post_version


def sidecar(root: Path, version: str | None, pretrained="Qwen/Qwen2-VL-2B-Instruct", forgetbench="0.1.0") -> None:
    if version is not None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "unscorable.json").write_text(json.dumps({
            "schema": "forgetbench.unscorable/1", "pretrained": pretrained, "rank": 0, "counts": {}, "items": [],
            "versions": {"lmms-eval": version, "forgetbench": forgetbench}}))


def run_pair(tmp_path, pre_version, post_version, *extra, **recorded):
    pre, post, a, b = pair(pre_version, post_version, **recorded)
    sidecar(tmp_path / "pre", a)
    sidecar(tmp_path / "post", b)
    return invoke(tmp_path, pre, post, *extra)


def load(tmp_path):
    return (run_files.load_run(tmp_path / "pre", "--pre"), run_files.load_run(tmp_path / "post", "--post"))


def test_a_commit_between_runs_pairs_and_lists_both_strings(tmp_path, capsys):
    rc, out = run_pair(tmp_path, "0.7.3", "0.7.3")
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["pairing"]["mismatches"] == []
    notes = pairing.version_notes(*load(tmp_path))
    assert notes["recorded_versions"] == {"pre": "main@aaaa111", "post": "main@bbbb222"}
    assert notes["installed_versions"]["pre"] == {"lmms-eval": "0.7.3", "forgetbench": "0.1.0"}
    assert "main@aaaa111" in notes["note"] and "main@bbbb222" in notes["note"] and "0.7.3" in notes["note"]


def test_another_installed_version_is_refused_in_one_line(tmp_path, capsys):
    rc, out = run_pair(tmp_path, "0.7.3", "0.7.4")
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists() and "Traceback" not in err
    assert err.splitlines() == [f"forgetbench compare: error: --post {tmp_path / 'post'}: installed lmms-eval version "
                                'differs from --pre: pre "0.7.3"; post "0.7.4"' + SETTINGS]


def test_same_recorded_string_other_installed_version_is_refused(tmp_path, capsys):
    rc, _ = run_pair(tmp_path, "0.7.3", "0.8.0", post_recorded="main@aaaa111")
    assert rc == 2 and "installed lmms-eval version differs" in capsys.readouterr().err


def test_allow_mismatch_lists_the_installed_version(tmp_path, capsys):
    rc, out = run_pair(tmp_path, "0.7.3", "0.7.4", "--allow-mismatch")
    assert rc == 0
    (line,) = json.loads(out.read_text())["pairing"]["mismatches"]
    assert 'installed lmms-eval version differs from --pre: pre "0.7.3"; post "0.7.4"' in line


def test_without_installed_versions_branch_at_commit_is_listed_not_compared(tmp_path, capsys):
    rc, out = run_pair(tmp_path, None, None, pre_recorded="unknown@unknown", post_recorded="main@bbbb222")
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["pairing"]["mismatches"] == []
    notes = pairing.version_notes(*load(tmp_path))
    assert notes["recorded_versions"] == {"pre": "unknown@unknown", "post": "main@bbbb222"}
    assert notes["installed_versions"] == {"pre": None, "post": None} and "not compared" in notes["note"]


def test_without_installed_versions_release_strings_are_compared(tmp_path, capsys):
    rc, _ = run_pair(tmp_path, None, None, pre_recorded="0.7.3", post_recorded="0.7.4")
    assert rc == 2
    assert 'lmms-eval version differs from --pre: pre "0.7.3"; post "0.7.4"' in capsys.readouterr().err


def test_one_side_without_installed_version_is_noted(tmp_path, capsys):
    rc, _ = run_pair(tmp_path, "0.7.3", None)
    assert rc == 0, capsys.readouterr().err
    assert "post records no installed lmms-eval version" in pairing.version_notes(*load(tmp_path))["note"]


def test_a_sidecar_of_another_run_is_ignored(tmp_path, capsys):
    """Two runs into one --output_path share the sidecar: the last run's, which names its own model."""
    pre, post, _, _ = pair(None, None, pre_recorded="0.7.3", post_recorded="0.7.4")
    sidecar(tmp_path / "pre", "0.7.4", pretrained="/some/other/model")
    sidecar(tmp_path / "post", "0.7.4")
    rc, _ = invoke(tmp_path, pre, post)
    assert rc == 2 and 'pre "0.7.3"; post "0.7.4"' in capsys.readouterr().err


def test_same_versions_say_nothing(tmp_path, capsys):
    rc, _ = run_pair(tmp_path, "0.7.3", "0.7.3", post_recorded="main@aaaa111")
    assert rc == 0 and pairing.version_notes(*load(tmp_path)) is None


# --------------------------------------------------------------------------
# Real lmms-eval runs, each inside another git repository
# --------------------------------------------------------------------------

DOWN, UP = "forgetbench_lab_color", "forgetbench_lab_shape"


def git_repo(folder: Path) -> Path:
    folder.mkdir()
    for command in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                     "--allow-empty", "-m", f"commit in {folder.name}"]):
        subprocess.run(["git", *command], cwd=folder, check=True, capture_output=True)
    return folder / ".git"


@pytest.mark.heavy
def test_real_runs_from_two_repositories_pair(tmp_path, lab_model, capsys):
    """lmms-eval runs ``git describe`` in site-packages, not in the cwd: GIT_DIR stands in for a venv inside each
    repository (a commit between the two runs)."""
    names = ("pre", "post")
    lmms_eval_runs([["--model", "forgetbench", "--model_args", f"pretrained={lab_model}", "--tasks", f"{DOWN},{UP}",
                     "--limit", "4", "--output_path", str(tmp_path / name), "--log_samples"] for name in names],
                   tmp_path, [{"GIT_DIR": str(git_repo(tmp_path / f"repo_{name}"))} for name in names])
    found = {}
    for name in names:
        (file,) = (tmp_path / name).glob("*/*_results.json")
        found[name] = json.loads(file.read_text())["lmms_eval_version"]
    assert found["pre"] != found["post"] and "@" in found["pre"]  # two commits recorded
    report = tmp_path / "r.json"
    rc = main(["--pre", str(tmp_path / "pre"), "--post", str(tmp_path / "post"), "--downstream", DOWN,
               "--upstream", UP, "--resamples", "200", "--json", str(report)])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(report.read_text())["pairing"]["mismatches"] == []
    pre, post = run_files.load_run(tmp_path / "pre", "--pre"), run_files.load_run(tmp_path / "post", "--post")
    notes = pairing.version_notes(pre, post)
    assert notes["recorded_versions"] == found
    installed = run_files.installed_versions(pre)
    from importlib.metadata import version
    assert installed == run_files.installed_versions(post) and installed["lmms-eval"] == version("lmms-eval")


@pytest.mark.parametrize("module", [pairing, run_files])
def test_doctests(module):
    import doctest

    assert doctest.testmod(module).failed == 0
