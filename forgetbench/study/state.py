"""``OUT/study.json``: the plan and every finished step, rewritten atomically after each step, so that a rerun of the
same command continues from the last finished step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from forgetbench.outputs import json_bytes, write_all_atomic
from forgetbench.study.errors import StudyError
from forgetbench.study.plan import Plan

STATE_NAME = "study.json"


class State:
    """``OUT/study.json``: the plan and every finished step, rewritten atomically after each step."""

    def __init__(self, out: Path, plan: Plan):
        self.out, self.file = out, out / STATE_NAME
        self.data = {"signature": plan.signature(), "steps": {}}

    @classmethod
    def open(cls, out: Path, plan: Plan, overwrite: bool) -> State:
        state = cls(out, plan)
        if overwrite and out.exists():
            shutil.rmtree(out)
        if state.file.is_file():
            stored = json.loads(state.file.read_text())
            if stored.get("signature") != state.data["signature"]:
                raise StudyError(f"--out {out}: holds another study (different settings); pass --overwrite to "
                                 "replace it")
            state.data = stored
        elif out.exists() and any(out.iterdir()):
            raise StudyError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
        (out / "logs").mkdir(parents=True, exist_ok=True)
        return state

    def done(self, step: str) -> dict | None:
        return self.data["steps"].get(step)

    def finish(self, step: str, **record) -> None:
        self.data["steps"][step] = record
        write_all_atomic({self.file: json_bytes(self.data)})
