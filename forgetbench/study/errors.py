"""The study's one error type, in a module of its own so that the plan, the state and the steps all raise it without
importing each other."""

from __future__ import annotations

from forgetbench.errors import ForgetbenchError


class StudyError(ForgetbenchError):
    """A step failed or the input is unusable; printed as one line, exit 2."""
