"""Where the engine's lines go: the `framepack` logger, set up once by each entry point.

Every module logs to `logging.getLogger(__name__)`, a child of `framepack`, and progress lines go the same way.
An entry point calls `configure_logging` once: the service sends the lines to stdout (Cog returns a prediction's
output streams as its logs), the local command to stderr (its stdout carries only the output path). Lines are
the bare messages, as users read them.
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("framepack")
STREAMS = ("stdout", "stderr")


class _CurrentStream(logging.Handler):
    """Writes to `sys.stdout` or `sys.stderr` as they are when the line is written: Cog and pytest replace them."""

    def __init__(self, stream: str):
        super().__init__()
        self.stream = stream
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = getattr(sys, self.stream)
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging must never break a generation; report it as logging does
            self.handleError(record)


def configure_logging(stream: str = "stderr") -> None:
    """Send the engine's INFO lines and above to `sys.<stream>`, replacing an earlier call's choice.

    The lines do not also reach the root logger, so an application that configured logging sees them once.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {', '.join(STREAMS)}, got {stream!r}")
    for handler in [h for h in LOGGER.handlers if isinstance(h, _CurrentStream)]:
        LOGGER.removeHandler(handler)
    LOGGER.addHandler(_CurrentStream(stream))
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
