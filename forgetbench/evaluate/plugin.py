"""forgetbench's hook into lmms-eval.

lmms-eval imports every ``lmms_eval.models`` entry point when ``lmms_eval.models`` is first imported, which the
CLI and ``lmms_eval.evaluator`` do before they build a ``TaskManager``. That is the one moment an installed
package gets to run inside a stock ``lmms-eval`` command, so forgetbench uses it to add its task folder to the
folders every ``TaskManager`` indexes. Why, and the limits, are in docs/lmms-eval.md.
"""

from __future__ import annotations

import functools
import logging

from forgetbench import tasks_path

logger = logging.getLogger(__name__)
_MARK = "_forgetbench_tasks_added"


def add_task_folder() -> bool:
    """Make every lmms-eval ``TaskManager`` index forgetbench's tasks as if given ``--include_path``.

    Idempotent. Returns False, with a warning naming the fallback, if this lmms-eval has no
    ``TaskManager.initialize_tasks(include_path=...)`` to extend.
    """
    from lmms_eval.tasks import TaskManager

    original = getattr(TaskManager, "initialize_tasks", None)
    if original is None:
        logger.warning(
            "forgetbench: this lmms-eval has no TaskManager.initialize_tasks; pass --include_path %s", tasks_path()
        )
        return False
    if getattr(original, _MARK, False):
        return True

    folder = str(tasks_path())

    @functools.wraps(original)
    def initialize_tasks(self, include_path=None, include_defaults=True):
        paths = [] if include_path is None else [include_path] if isinstance(include_path, str) else list(include_path)
        if folder not in paths:
            paths.append(folder)
        return original(self, include_path=paths, include_defaults=include_defaults)

    setattr(initialize_tasks, _MARK, True)
    TaskManager.initialize_tasks = initialize_tasks
    return True


def lmms_eval_entry_point() -> list:
    """The ``lmms_eval.models`` entry point: registers the task folder and the ``forgetbench`` model."""
    from forgetbench.evaluate.model import manifest

    add_task_folder()
    return [manifest()]
