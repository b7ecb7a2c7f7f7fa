"""The engine's lines go where the entry point said, once each."""

import logging

import pytest

from framepack.logs import configure_logging


def test_lines_follow_the_configured_stream_once(capsys):
    line = logging.getLogger("framepack.runtime.pipeline")
    configure_logging("stdout")
    configure_logging("stdout")  # a second start-up in one process must not double the lines
    line.info("to stdout")
    configure_logging("stderr")
    line.info("to stderr")
    line.debug("not shown")
    captured = capsys.readouterr()
    assert captured.out == "to stdout\n" and captured.err == "to stderr\n"


def test_an_unknown_stream_is_refused():
    with pytest.raises(ValueError, match="stream must be one of stdout, stderr, got 'file'"):
        configure_logging("file")
