"""The one error type of the compare part: a refusal the user can fix."""

from __future__ import annotations

from forgetbench.errors import ForgetbenchError


class CompareError(ForgetbenchError):
    """A refusal: bad input the user can fix. Printed as one line, exit 2."""
