"""``--launcher local|slurm``: the study's job graph through submitit. The local launcher gives the sequential
study's very E, F and O; a controller killed while two arms train re-attaches without retraining; the Slurm
executor, pointed at stub sbatch/sacct commands, writes the sbatch scripts and afterok dependencies we expect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN

pytest.importorskip("submitit")

QUICK = ["--methods", "lora,full_st", "--limit", "4", "--recipe-args", "--max_steps 2"]


def _env(root: Path) -> dict:
    # lmms-eval records the git checkout around it as its version: keep git from finding this repository, so that a
    # commit during the run changes nothing (tests/test_pairing.py)
    return {**os.environ, "GIT_CEILING_DIRECTORIES": str(root)}


def _study(out: Path, cache: Path, *extra: str) -> list[str]:
    return [str(BIN / "forgetbench"), "study", "--out", str(out), "--cache-dir", str(cache), *extra]


def _run(command: list[str], root: Path, timeout: int = 1200) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout,
                               check=False)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        pytest.fail(f"{command[:3]} exited {completed.returncode}:\n{completed.stdout[-3000:]}\n"
                    f"{completed.stderr[-3000:]}")
    return completed, elapsed


def _efo(out: Path) -> dict:
    report = json.loads((out / "compare.json").read_text())
    return {name: (m["E"], m["F"], m["O"]) for name, m in report["methods"].items()}


def _compare_launchers(tmp_path: Path, args: list[str]) -> None:
    cache = tmp_path / "cache"
    sequential, seq_seconds = _run(_study(tmp_path / "sequential", cache, *args), tmp_path)
    local, local_seconds = _run(_study(tmp_path / "local", cache, *args, "--launcher", "local", "--max-parallel", "2"),
                                tmp_path)
    print(f"\nwall time: sequential {seq_seconds:.0f} s, --launcher local --max-parallel 2 {local_seconds:.0f} s "
          "(the local one reused the cached baseline)")
    local_efo, sequential_efo = _efo(tmp_path / "local"), _efo(tmp_path / "sequential")
    assert local_efo.keys() == sequential_efo.keys()
    for arm, efo in sequential_efo.items():
        assert local_efo[arm] == pytest.approx(efo), arm
    state = json.loads((tmp_path / "local" / "study.json").read_text())
    trained = [arm["name"] for arm in state["signature"]["arms"]]  # an arm's points (<arm>@wise-...) only evaluate
    points = list(_efo(tmp_path / "sequential"))
    assert set(trained) < set(points)
    for step in ("baseline", *(f"train/{arm}" for arm in trained), *(f"eval/{point}" for point in points)):
        job = state["jobs"][step]
        assert job["state"] == "COMPLETED" and job["launcher"] == "local" and job["job_id"].isdigit(), step
        assert Path(job["stdout"]).is_file(), step
        assert step in state["steps"], step
    assert state["missing"] == []


@pytest.mark.slow  # real lab studies: minutes on 2 shared cores
def test_the_local_launcher_gives_the_sequential_studys_numbers(tmp_path):
    _compare_launchers(tmp_path, QUICK)


@pytest.mark.slow
def test_the_default_lab_study_through_the_local_launcher_gives_the_same_numbers(tmp_path):
    _compare_launchers(tmp_path, [])


@pytest.mark.slow  # real lab studies: minutes on 2 shared cores
def test_a_killed_controller_reattaches_and_retrains_nothing(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "killed"
    command = _study(out, cache, *QUICK, "--launcher", "local", "--max-parallel", "3")
    process = subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    state_file = out / "study.json"
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:  # both trainings submitted and running
        if state_file.is_file():
            jobs = json.loads(state_file.read_text()).get("jobs", {})
            if all(jobs.get(f"train/{arm}", {}).get("state") == "RUNNING" for arm in ("lora", "full_st")):
                break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the study ended before it could be killed"
    before = json.loads(state_file.read_text())
    assert "compare" not in before["steps"]
    ids = {step: before["jobs"][step]["job_id"] for step in ("train/lora", "train/full_st")}

    completed, _ = _run(command, tmp_path)
    after = json.loads(state_file.read_text())
    for step, job_id in ids.items():  # re-attached (or merged) the very same training jobs: none was resubmitted
        assert after["jobs"][step]["job_id"] == job_id, step
        assert after["jobs"][step]["state"] == "COMPLETED", step
        assert f"[{step}] submitted" not in completed.stdout, step
    assert set(_efo(out)) == {"lora", "full_st"} and after["missing"] == []
    finished = {step: after["steps"][step] for step in ids}
    _run(command, tmp_path)  # a third run: everything is done, nothing reruns, the records stay as they were
    final = json.loads(state_file.read_text())
    assert {step: final["steps"][step] for step in ids} == finished
    assert {step: final["jobs"][step]["job_id"] for step in ids} == ids


STUBS = {
    "sbatch": """#!/bin/sh
n=$(cat "$STUB/next" 2>/dev/null || echo 1000)
echo $((n + 1)) > "$STUB/next"
script="$1"; for a in "$@"; do script="$a"; done
cp "$script" "$STUB/sbatch-$n.sh"
echo "$@" > "$STUB/sbatch-$n.args"
echo "Submitted batch job $n"
""",
    "sacct": """#!/bin/sh
echo "JobID|State|NodeList"
for f in "$STUB"/sbatch-*.sh; do n=${f##*/sbatch-}; n=${n%.sh}; echo "$n|${STUB_STATE:-PENDING}|None"; done
""",
    "squeue": "#!/bin/sh\nexit 0\n",
    "srun": "#!/bin/sh\nexit 0\n",
    "scancel": "#!/bin/sh\necho \"$@\" >> \"$STUB/scancel\"\n",
}


def test_the_slurm_launcher_writes_sbatch_scripts_with_afterok_dependencies(tmp_path):
    stub = tmp_path / "stub"
    stub.mkdir()
    for name, text in STUBS.items():
        (stub / name).write_text(text)
        (stub / name).chmod(0o755)
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text("""
limit: 4
slurm: {partition: gpu, gpus_per_job: 1, cpus_per_task: 4, time: 120, account: lab, extra: {qos: high}}
arms:
  lora: {recipe: lora}
  full_st: {recipe: full_st, slurm: {gpus_per_job: 4, time: "08:00:00"}}
""")
    out = tmp_path / "slurm-study"
    env = {**_env(tmp_path), "PATH": f"{stub}:{os.environ['PATH']}", "STUB": str(stub)}
    completed = subprocess.run(_study(out, tmp_path / "cache", "--config", str(study_yaml), "--launcher", "slurm",
                                      "--detach", "--slurm-partition", "gpu-long"),
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    state = json.loads((out / "study.json").read_text())
    jobs = state["jobs"]
    assert set(jobs) == {"baseline", "train/lora", "eval/lora", "train/full_st", "eval/full_st"}
    scripts = {step: (stub / f"sbatch-{job['job_id']}.sh").read_text() for step, job in jobs.items()}
    for step, script in scripts.items():
        assert "#SBATCH --partition=gpu-long" in script, step  # the flag over the YAML's
        assert "#SBATCH --cpus-per-task=4" in script and "#SBATCH --account=lab" in script, step
        assert "#SBATCH --qos=high" in script, step
        folder = jobs[step]["folder"]
        assert f"-u -m submitit.core._submit {folder.rsplit('/', 1)[0]}/%j" in script, step
        assert "srun --unbuffered" in script, step
    assert "#SBATCH --gpus-per-node=4" in scripts["train/full_st"] and "#SBATCH --time=08:00:00" in scripts[
        "train/full_st"]
    for step in ("baseline", "train/lora", "eval/lora", "eval/full_st"):
        assert "#SBATCH --gpus-per-node=1" in scripts[step] and "#SBATCH --time=120" in scripts[step], step
    for arm in ("lora", "full_st"):
        train_id = jobs[f"train/{arm}"]["job_id"]
        assert f"#SBATCH --dependency=afterok:{train_id}" in scripts[f"eval/{arm}"], arm
        assert jobs[f"eval/{arm}"]["after"] == train_id
        assert "--dependency" not in scripts[f"train/{arm}"]
    assert "--dependency" not in scripts["baseline"]
    assert "rerun the same command to re-attach" in completed.stdout

    # rerun while sacct says RUNNING: it re-attaches to every job and submits nothing (detached again)
    again = subprocess.run(_study(out, tmp_path / "cache", "--config", str(study_yaml), "--launcher", "slurm",
                                  "--detach", "--slurm-partition", "gpu-long"),
                           cwd=tmp_path, env={**env, "STUB_STATE": "RUNNING"}, capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "submitted job" not in again.stdout and again.stdout.count("re-attached to job") == 5
    assert json.loads((out / "study.json").read_text())["jobs"] == {
        step: {**job, "state": "SUBMITTED"} for step, job in jobs.items()}


@pytest.mark.slow  # real lab studies: minutes on 2 shared cores
def test_a_failed_job_is_named_with_its_log_and_the_other_arm_is_compared(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "failing"
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text("""
limit: 4
arms:
  lora: {recipe: lora, args: "--max_steps 2"}
  broken: {recipe: lora, args: "--max_steps 2 --learning_rate not-a-number"}
""")
    completed, _ = _run(_study(out, cache, "--config", str(study_yaml), "--launcher", "local"), tmp_path)
    state = json.loads((out / "study.json").read_text())
    (missing_train, missing_eval) = state["missing"]
    job_id = state["jobs"]["train/broken"]["job_id"]
    assert missing_train["step"] == "train/broken" and missing_train["job_id"] == job_id
    assert Path(missing_train["log"]).is_file()
    assert f"[train/broken] job {job_id} failed; see {missing_train['log']}" in completed.stdout
    assert missing_eval == {"step": "eval/broken", "job_id": None, "log": "not run: train/broken failed"}
    assert json.loads((out / "compare.json").read_text())["E"] is not None  # lora, compared alone
    assert "missing (not compared): train/broken" in (out / "summary.txt").read_text()
