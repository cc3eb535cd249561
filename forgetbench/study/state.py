"""``OUT/study.json``: the plan and every finished step, rewritten atomically after each step, so that a rerun of the
same command continues from the last finished step. Also what the study owns in ``OUT`` (what ``--overwrite`` may
remove) and the lock that lets one study at a time use an ``OUT``."""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path

from forgetbench.errors import one_line
from forgetbench.outputs import json_bytes, protected_folder, remove_owned, write_all_atomic
from forgetbench.study.errors import StudyError
from forgetbench.study.plan import Plan

STATE_NAME = "study.json"
LOCK_NAME = ".forgetbench-study.lock"  # never removed: a process may hold it (filelock locks the open file)
# Everything a study writes in OUT (compare's files: forgetbench.compare.Comparison.write), and the temporary
# files of an all-or-nothing write that a kill can leave (outputs.write_all_atomic names them .NAME.*.tmp).
_FILES = (STATE_NAME, "compare.json", "compare.md", "compare.csv", "forgotten*.csv", "learned*.csv", "ef.png",
          "ef.svg", "report.html", "summary.txt")
OWNED = ("eval", "arms", "logs", "jobs", *_FILES, *(f".{name}.*.tmp" for name in _FILES))


@contextlib.contextmanager
def study_lock(out: Path) -> Iterator[int]:
    """Hold ``OUT``'s lock for the whole study, or refuse at once: one study per ``OUT``. An OS lock (``flock``) on
    an open file, so it goes with the last process that holds that file open: a killed study's lock goes with it.
    Yields the lock's file descriptor: the study's steps inherit it (:func:`forgetbench.study.steps.run_logged`), so
    a study killed alone (``kill -9`` of its pid) keeps ``OUT`` locked until the step it started ends, and a rerun
    cannot start that step again beside it."""
    import fcntl

    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StudyError(f"--out {out}: another forgetbench study, or a step an earlier run of it started, is running "
                         f"on it (it holds {out / LOCK_NAME}); wait for it to end, or choose another --out") from None
    try:
        yield fd
    finally:
        os.close(fd)  # no LOCK_UN: a step still running (after an exception) keeps the lock until it ends


def _read(file: Path) -> dict:
    """A study's study.json, or StudyError: a file that is not one is never resumed from, nor removed."""
    try:
        stored = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StudyError(f"--out {file.parent}: {file.name} is not a forgetbench study's (not JSON: {one_line(exc)}); "
                         "move it away or choose another --out") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("signature"), dict) \
            or not isinstance(stored.get("steps"), dict):
        raise StudyError(f"--out {file.parent}: {file.name} is not a forgetbench study's (no signature and steps); "
                         "move it away or choose another --out")
    return stored


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``OUT`` the study may not use, before it writes anything there (not even its lock): the home
    folder, the root, the current directory or a git work tree's root (a study's folders and files would land among
    the user's); a folder that holds something but no study.json, with or without ``--overwrite``."""
    reason = protected_folder(out)
    if reason is not None:
        raise StudyError(f"--out {out}: {reason}; give the study a folder of its own (such as runs/my-study)"
                         + ("; nothing was removed" if overwrite else ""))
    if not out.exists():
        return
    if not out.is_dir():
        raise StudyError(f"--out {out}: not a folder")
    holds = [p for p in out.iterdir() if p.name != LOCK_NAME]
    if (out / STATE_NAME).is_file():
        _read(out / STATE_NAME)
    elif holds and overwrite:
        raise StudyError(f"--overwrite: --out {out} holds no {STATE_NAME}, so it is not a study's folder; nothing "
                         "was removed (remove it yourself, or choose another --out)")
    elif holds:
        raise StudyError(f"--out {out}: exists and is not empty, and holds no {STATE_NAME}; choose another --out")


class State:
    """``OUT/study.json``: the plan and every finished step, rewritten atomically after each step."""

    lock_fds: tuple[int, ...] = ()  # OUT's lock (study_lock), inherited by every step's process

    def __init__(self, out: Path, plan: Plan):
        self.out, self.file = out, out / STATE_NAME
        self.data = {"signature": plan.signature(), "steps": {}}

    @classmethod
    def open(cls, out: Path, plan: Plan, overwrite: bool) -> State:
        """The study in ``OUT``: resumed, started over (``overwrite``: only the study's own outputs are removed;
        anything else is named and left), or new. ``OUT``'s lock must be held (:func:`study_lock`); study.json is
        written at once, so a study killed in its first step is recognised as one."""
        state = cls(out, plan)
        check_out(out, overwrite)
        if overwrite and state.file.is_file():
            left = remove_owned(out, OWNED, marker=STATE_NAME, keep=(LOCK_NAME,))
            if left:
                print(f"[overwrite] removed the study's outputs from {out}; left what the study did not write: "
                      f"{', '.join(p.name for p in left)}", flush=True)
        if state.file.is_file():
            stored = _read(state.file)
            if stored["signature"] != state.data["signature"]:
                raise StudyError(f"--out {out}: holds another study (different settings); pass --overwrite to "
                                 "replace it")
            state.data = stored
        (out / "logs").mkdir(parents=True, exist_ok=True)
        if not state.file.is_file():
            write_all_atomic({state.file: json_bytes(state.data)})
        return state

    def done(self, step: str) -> dict | None:
        return self.data["steps"].get(step)

    def finish(self, step: str, **record) -> None:
        self.data["steps"][step] = record
        write_all_atomic({self.file: json_bytes(self.data)})

    def finish_jobs(self) -> None:
        """Rewrite study.json after the launcher changed ``data["jobs"]`` (each job's id, logs and state)."""
        write_all_atomic({self.file: json_bytes(self.data)})

    def remove(self, *relative: str) -> None:
        """Remove some of the study's own paths in ``OUT`` (an unfinished evaluation, an arm that starts over);
        ``relative`` are literal paths (an arm's name is not a pattern)."""
        remove_owned(self.out, [glob.escape(path) for path in relative], marker=STATE_NAME, keep=(LOCK_NAME,))


def job_record(out: Path, step: str) -> Path:
    """Where a job (``--launcher local|slurm``) records its finished step: ``OUT/jobs/<step>.json``, '/' written
    '_' as in the logs' names."""
    return out / "jobs" / f"{step.replace('/', '_')}.json"


class JobState(State):
    """The state a job's step sees: it records its step in its own file (:func:`job_record`, atomically), never in
    study.json, which the controller alone writes (several jobs finish at once); the controller merges it."""

    def finish(self, step: str, **record) -> None:
        self.data["steps"][step] = record
        (self.out / "jobs").mkdir(exist_ok=True)
        write_all_atomic({job_record(self.out, step): json_bytes(record)})
