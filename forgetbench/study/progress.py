"""The running step's own progress, beneath the study's bar over arms: a thread that reads the step's log while its
subprocess runs (training: step n of N and the last loss the trainer logged; evaluation: lmms-eval's requests done
of total) and shows it as a second tqdm bar. Nothing in the step changes: the log is the step's own."""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

_BAR = re.compile(r"(\d+)/(\d+) \[")  # tqdm: " 40%|####  | 48/120 [00:03<00:05, ...]"
_NOT_THE_STEP = ("shards", "Loading", "Postprocessing", "Map", "Filter", "Generating", "Building", "Tokeniz")
_LOSS = re.compile(r"""['"]loss['"]:\s*'?([-+0-9.eE]+|nan|inf)""")


def read_progress(log: Path, tail: int = 65536) -> tuple[int, int, str | None] | None:
    """(done, total, last loss) from the end of a step's log, or None when it shows no progress bar yet.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "train.log"
    >>> _ = f.write_text("{'loss': 2.31, 'epoch': 0.5}\\r 1/6 [00:01<00:05]\\r 2/6 [00:02<00:04]\\n"
    ...                  "Writing model shards: 1/1 [00:00<00:00]")
    >>> read_progress(f)
    (2, 6, '2.31')
    """
    try:
        with log.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - tail))
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    # the step's own bar: not a loading, mapping, post-processing or shard-writing bar of the libraries
    bars = [bar for line in re.split(r"[\r\n]", text) if not any(word in line for word in _NOT_THE_STEP)
            for bar in _BAR.findall(line)]
    if not bars:
        return None
    losses = _LOSS.findall(text)
    done, total = bars[-1]
    return int(done), int(total), (losses[-1] if losses else None)


@contextlib.contextmanager
def step_progress(step: str, log: Path, every: float = 0.5) -> Iterator[None]:
    """Show ``step``'s progress (read from ``log``) in a bar beneath the study's while the body runs."""
    from tqdm.auto import tqdm

    stop = threading.Event()
    bar = tqdm(total=0, desc=step, position=1, leave=False, file=sys.stdout, unit="it",
               bar_format="{desc}: {n_fmt}/{total_fmt} {postfix}")

    def poll() -> None:
        while not stop.wait(every):
            found = read_progress(log)
            if found is None:
                continue
            done, total, loss = found
            what = "step" if step.startswith("train/") else "requests"
            bar.set_description_str(f"{step} {what}", refresh=False)
            bar.total, bar.n = total, done
            bar.set_postfix_str(f"loss {loss}" if loss is not None else "", refresh=False)
            bar.refresh()

    thread = threading.Thread(target=poll, name=f"progress {step}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
