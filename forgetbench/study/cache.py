"""The baseline cache: the base model's evaluation, stored once per everything pairing checks and reused by every
study that asks for the same one.

``CACHE/<key>/`` holds ``eval/`` (lmms-eval's output) and ``DONE`` (JSON: what was evaluated, its throughput, and
every file's size and sha256), written to ``CACHE/.<key>.partial/`` and renamed into place whole. One study at a
time writes an entry (``CACHE/.<key>.lock``, an OS lock that dies with its process); another study that needs the
same entry waits, then reuses it. An entry whose files do not match its ``DONE`` is evaluated again, saying why; a
cache that cannot be written (read-only) is said in one line and the study goes on without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from forgetbench import __version__, tasks_path
from forgetbench.errors import one_line
from forgetbench.outputs import NotOwned, remove_owned
from forgetbench.study.plan import Plan, is_hub_id, model_location

ENTRY_FILES = ("eval", "DONE")  # what an entry holds, all the cache ever removes from one


def cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "forgetbench" / "baselines"


def _fingerprint(path: str) -> object:
    """A folder's identity for the cache: its files' names, sizes and times."""
    folder = Path(path)
    return sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                  for f in folder.rglob("*") if f.is_file())


def hub_revision(model: str, revision: str | None) -> str | None:
    """The commit a hub model's ``revision`` (default: main) resolves to: asked of the hub, else read from the local
    Hugging Face cache (the snapshot an offline load would read); None when neither can tell."""
    from huggingface_hub import HfApi, constants

    try:
        return HfApi().model_info(model, revision=revision).sha
    except Exception:  # noqa: BLE001 - offline or unreachable: the local cache's ref is the next best witness
        pass
    ref = Path(constants.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "refs" / (revision or "main")
    return ref.read_text().strip() if ref.is_file() else None


def model_identity(plan: Plan, location: str) -> object:
    """The model part of the key: a folder (the lab's included) by its files; a hub model by its id and the commit
    it resolves to (the pinned snapshot with ``--revision``)."""
    if not is_hub_id(plan.model):
        return _fingerprint(location)
    if plan.revision is not None:  # model_location's snapshot folder is named by its commit
        return {"hub": plan.model, "revision": Path(location).name}
    resolved = hub_revision(plan.model, None)
    if resolved is None:
        print(f"[baseline] {plan.model}: its revision cannot be resolved here (hub unreachable, not in the local "
              "Hugging Face cache); the cache keys it by name: pass --revision to pin it", flush=True)
    return {"hub": plan.model, "revision": resolved}


def baseline_key(plan: Plan, location: str | None = None) -> str:
    """Everything pairing checks, hashed: the model, the tasks and their definitions, the limit, the wrapper and
    its settings, and the versions of the stack. ``location``: :func:`~forgetbench.study.plan.model_location`."""
    from forgetbench.checkpoint import library_versions

    location = location or model_location(plan.model, plan.revision)
    task_files = sorted((str(p.relative_to(tasks_path())), hashlib.sha256(p.read_bytes()).hexdigest())
                        for p in tasks_path().rglob("*") if p.is_file() and p.suffix != ".pyc")
    versions = library_versions()
    # What lmms-eval itself records as its version (and compare pairs on): "branch@commit" of the git checkout
    # that holds the installed package, so a venv inside a repository changes it at every commit.
    from lmms_eval.utils import get_lmms_eval_version_string

    versions["lmms_eval_recorded"] = get_lmms_eval_version_string()
    key = {"model": model_identity(plan, location), "tasks": plan.tasks, "limit": plan.limit,
           "wrapper": plan.eval_backend, "device": plan.device, "batch_size": plan.batch_size,
           "num_processes": plan.num_processes, "task_files": task_files, "forgetbench": __version__,
           "versions": versions}
    if plan.backend_args:  # absent for the default backend: the keys of existing caches stay what they were
        key["backend_args"] = list(plan.backend_args)
    if getattr(plan, "tasks_dir", None):  # user tasks: their definitions and data, as forgetbench's own above
        root = Path(plan.tasks_dir)
        key["user_task_files"] = sorted((str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
                                        for p in root.rglob("*") if p.is_file() and p.suffix != ".pyc"
                                        and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_entry_done(cache: Path, key: str) -> bool:
    """Whether the cache holds a finished entry for ``key`` whose files match its DONE (what the study would
    reuse). Reads only: no lock is taken, nothing is written (``--dry-run``)."""
    done_file = cache / key / "DONE"
    try:
        done = json.loads(done_file.read_text()) if done_file.is_file() else None
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(done, dict) and mismatch(cache / key, done) is None


def _checksums(folder: Path) -> dict[str, dict]:
    """``{path relative to folder's parent: {size, sha256}}`` of every file under ``folder``."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023 - consumed within the iteration
                digest.update(block)
        found[str(path.relative_to(folder.parent))] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return found


def mismatch(entry: Path, done: dict) -> str | None:
    """Why ``entry``'s files are not the ones its DONE records (first difference), or None when they are."""
    recorded = done.get("files")
    if not isinstance(recorded, dict):
        return "its DONE records no sizes and checksums (an entry of an older forgetbench)"
    found = _checksums(entry / "eval") if (entry / "eval").is_dir() else {}
    for name in sorted(set(recorded) | set(found)):
        if name not in found:
            return f"{name} is missing"
        if name not in recorded:
            return f"{name} is not in its DONE"
        if found[name]["size"] != recorded[name].get("size"):
            return f"{name} has {found[name]['size']} bytes, its DONE records {recorded[name].get('size')}"
        if found[name]["sha256"] != recorded[name].get("sha256"):
            return f"{name} has another sha256 than its DONE records"
    return None


class Entry:
    """One baseline of the cache, ``CACHE/<key>/``; see the module's docstring."""

    def __init__(self, root: Path, key: str):
        self.root, self.path = root, root / key
        self.scratch = root / f".{key}.partial"

    @contextlib.contextmanager
    def writing(self) -> Iterator[Entry]:
        """Hold the entry's lock (waiting, and saying so, while another study holds it). A cache folder where no
        lock can be made (read-only) is used without one: it can still be read, not written."""
        from filelock import FileLock, Timeout

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.root / f".{self.path.name}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                print(f"[baseline] another study is evaluating the same base model into {self.path}; waiting for "
                      "it, to reuse its evaluation", flush=True)
                lock.acquire()
        except OSError:
            yield self
            return
        try:
            yield self
        finally:
            lock.release()

    def reusable(self) -> dict | None:
        """The entry's DONE when its files are the ones it records; else None, saying why when it exists."""
        if not (self.path / "DONE").is_file():
            return None
        try:
            done = json.loads((self.path / "DONE").read_text())
            why = mismatch(self.path, done) if isinstance(done, dict) else "its DONE is not a JSON object"
        except (OSError, ValueError) as exc:
            done, why = None, f"its DONE cannot be read ({one_line(exc)})"
        if why is None:
            return done
        print(f"[baseline] the cached evaluation {self.path} does not match what it recorded ({why}); evaluating "
              "the base model again", flush=True)
        with contextlib.suppress(OSError, NotOwned):  # a read-only cache keeps it; storing will then say so
            remove_owned(self.path, ENTRY_FILES)
        return None

    def store(self, evaluation: Path, record: dict) -> bool:
        """Copy ``evaluation`` in as the entry, with a DONE recording ``record`` and every file's size and sha256;
        all or nothing. A cache that cannot be written is said in one line: False, and the study goes on."""
        try:
            remove_owned(self.scratch, ENTRY_FILES)
            shutil.copytree(evaluation, self.scratch / "eval")
            done = {**record, "files": _checksums(self.scratch / "eval")}
            (self.scratch / "DONE").write_text(json.dumps(done) + "\n")
            remove_owned(self.path, ENTRY_FILES)
            os.replace(self.scratch, self.path)
        except NotOwned as exc:
            print(f"[baseline] cannot store the evaluation in the cache ({exc}); the study goes on without caching "
                  "it", flush=True)
            return False
        except OSError as exc:
            print(f"[baseline] cannot store the evaluation in the cache ({exc.filename or self.root}: "
                  f"{exc.strerror or one_line(exc)}); the study goes on without caching it", flush=True)
            return False
        return True
