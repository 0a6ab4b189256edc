"""Error texts that are safe to print: they never carry the value of a DICOM element.

A library's exception message may quote the value it choked on (pydicom: ``Invalid value for VR
DA: 'GARCIA^ANA'``; Python: ``invalid literal for int() with base 10: 'MRN7654321'``). Such values
are patient data, so messages written to the terminal, ``rejected.csv`` or ``summary.json`` go
through :func:`safe_reason` first.
"""

from __future__ import annotations

import re

MAX_REASON_LENGTH = 160
"""A foreign message longer than this is cut (a long message is most likely a dump)."""

# Quotes, bytes literals and brackets are how libraries embed values in their messages; a message
# free of them, plain ASCII, describes the problem in the library's own words.
_VALUE_MARKERS = re.compile(r"['\"`\[\]{}\\]|b'|[^\x20-\x7e]")


class SafeMessageError(ValueError):
    """An error whose message was written by this project and carries no element value."""


def safe_reason(error: BaseException) -> str:
    """A one-line description of ``error`` without element values.

    Messages of this project's own errors (:class:`SafeMessageError` and the subclasses that the
    readers raise) are trusted. A foreign message is kept only when it cannot quote a value (no
    quotes, brackets or non-ASCII characters); otherwise only the exception's type is given.
    """
    name = type(error).__name__
    text = " ".join(str(error).split())
    if isinstance(error, SafeMessageError):
        return text or name
    if not text or _VALUE_MARKERS.search(text):
        return name
    if len(text) > MAX_REASON_LENGTH:
        text = text[:MAX_REASON_LENGTH].rstrip() + "..."
    return f"{name}: {text}"
