"""The one base error of forgetbench and the one way every command refuses: one line on stderr, a non-zero exit.

Every part raises a subclass of :class:`ForgetbenchError` for bad input or a failed step the user can fix
(``RecipeError``, ``CompareError``, ``StudyError``, ...). Every command's entry point goes through
:func:`guarded`, which turns such an error, Ctrl-C and a closed pipe into one line and an exit code, so no
command prints a traceback for something the user can fix.

>>> import io, contextlib
>>> err = io.StringIO()
>>> with contextlib.redirect_stderr(err):
...     code = guarded("forgetbench demo", lambda: (_ for _ in ()).throw(ForgetbenchError("--x 3:\\nnot allowed")))
>>> code, err.getvalue()
(2, 'forgetbench demo: error: --x 3: not allowed\\n')
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class ForgetbenchError(Exception):
    """Bad input or a failed step the user can fix: printed as one line, exit :data:`EXIT_REFUSED`."""


def one_line(exc: BaseException | str) -> str:
    """``exc`` as one line, whatever a path or a library's message contains.

    >>> one_line(ValueError("two\\nlines  here"))
    'two lines here'
    >>> one_line(KeyError())
    'KeyError'
    """
    return " ".join(str(exc).split()) or type(exc).__name__


def refuse(prog: str, exc: BaseException | str) -> int:
    """Print ``exc`` as one line prefixed by ``prog``; returns :data:`EXIT_REFUSED`."""
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return EXIT_REFUSED


def silence_stdout() -> None:
    """After a closed pipe (``| head``), point stdout at /dev/null so the interpreter's flush at exit is silent, as
    the Python docs advise."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def guarded(prog: str, action: Callable[[], int | None], on_error: Callable[[], None] | None = None) -> int:
    """Run a command's ``action`` and return its exit code: 0 (or what it returns); :data:`EXIT_REFUSED` with one
    line for a :class:`ForgetbenchError`; :data:`EXIT_INTERRUPTED` for Ctrl-C; 1 for a closed stdout.
    ``on_error`` runs before the line is printed (a recipe drops the warnings it held back)."""
    try:
        return action() or 0
    except ForgetbenchError as exc:
        if on_error is not None:
            on_error()
        return refuse(prog, exc)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return 1


def emit(text: str) -> int:
    """Print ``text`` (a table, a list): 0, or 1 when stdout was closed early."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_stdout()
        return 1
    return 0


def command_main(prog: str, configure: Callable[[argparse.ArgumentParser], None],
                 run: Callable[[argparse.Namespace], int | None], argv: Sequence[str] | None = None,
                 description: str | None = None) -> int:
    """A tool's ``main`` (its ``python -m`` entry point): parse ``argv`` with the arguments ``configure`` adds, then
    ``run`` them under :func:`guarded`. ``forgetbench <tool>`` calls the same ``configure`` and ``run``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    configure(parser)
    args = parser.parse_args(argv)
    return guarded(prog, lambda: run(args))
