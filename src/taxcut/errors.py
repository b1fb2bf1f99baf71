"""The one exception type users see.

Every error caused by the user's input (a folder, a file, a tensor, a spec field) is raised as a
:class:`TaxcutError` whose message is a single line that names the culprit and says what to do. The CLI prints
that line and exits non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations


class TaxcutError(Exception):
    """A user-facing error: one line naming the file, tensor or field, and what to do about it."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name), for quoting inside a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
