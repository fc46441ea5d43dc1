"""Log lines: text with the request's fields appended, or one JSON object per line for a log collector."""

from __future__ import annotations

import json
import logging
import sys
import warnings

import pytest

from model.cli import main
from model.logs import JsonFormatter, TextFormatter, log_format, logging_fields, setup_logging, use_format


def _record(name: str = "service.engine", msg: str = "warmed up in %.2f s", args: tuple = (0.22,), **kw) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, kw.pop("exc_info", None), **kw)


def test_json_lines_carry_time_level_logger_message_and_the_request() -> None:
    line = JsonFormatter().format(_record())
    assert "\n" not in line
    out = json.loads(line)
    assert out.keys() == {"time", "level", "logger", "message"}
    assert out["level"] == "INFO" and out["logger"] == "service.engine" and out["message"] == "warmed up in 0.22 s"
    assert out["time"].endswith("Z") and out["time"][10] == "T" and len(out["time"]) == len("2026-11-30T14:21:35.591Z")
    with logging_fields(request_id="abc-123"):
        with logging_fields(route="/v1/classify"):  # nested blocks add to the fields
            inner = json.loads(JsonFormatter().format(_record()))
        outer = json.loads(JsonFormatter().format(_record()))
    assert inner["request_id"] == "abc-123" and inner["route"] == "/v1/classify"
    assert outer["request_id"] == "abc-123" and "route" not in outer
    assert "request_id" not in json.loads(JsonFormatter().format(_record()))  # the block is over


def test_json_access_lines_are_fields_and_a_traceback_stays_in_its_line() -> None:
    access = _record("uvicorn.access", '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5", "POST", "/v1/classify", "1.1", 422))
    out = json.loads(JsonFormatter().format(access))
    assert out["message"] == '127.0.0.1:5 - "POST /v1/classify HTTP/1.1" 422'
    assert (out["client"], out["method"], out["path"], out["http_version"], out["status"]) == (
        "127.0.0.1:5", "POST", "/v1/classify", "1.1", 422)
    try:
        raise ValueError("bad pixels")
    except ValueError:
        failed = _record(msg="classify failed", args=(), exc_info=sys.exc_info())
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "classify failed" and "ValueError: bad pixels" in out["exception"]
    extra = _record(msg="stored", args=())
    extra.sha256, extra.size = "ab" * 32, object()  # logger.info(..., extra={...}); anything becomes text
    out = json.loads(JsonFormatter().format(extra))
    assert out["sha256"] == "ab" * 32 and out["size"].startswith("<object")
    colour = _record(msg="Started", args=())
    colour.color_message = "\x1b[36mStarted\x1b[0m"  # uvicorn's ANSI copy of its message is left out
    assert "color_message" not in json.loads(JsonFormatter().format(colour))


def test_text_lines_append_the_request_before_a_traceback() -> None:
    plain = TextFormatter().format(_record())
    assert plain.endswith("INFO service.engine: warmed up in 0.22 s") and "[" not in plain
    try:
        raise ValueError("bad pixels")
    except ValueError:
        failed = _record(msg="classify failed", args=(), exc_info=sys.exc_info())
    with logging_fields(request_id="abc-123"):
        first, *rest = TextFormatter().format(failed).splitlines()
    assert first.endswith("classify failed [request_id=abc-123]")
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: bad pixels"


def test_the_format_is_chosen_by_name_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEEPFIT_LOG_FORMAT", raising=False)
    assert log_format() == "text" and log_format(" JSON ") == "json"
    monkeypatch.setenv("KEEPFIT_LOG_FORMAT", "json")
    assert log_format() == "json"
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        setup_logging("INFO")
        (handler,) = root.handlers
        assert isinstance(handler.formatter, JsonFormatter)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            records: list[logging.LogRecord] = []
            catcher = logging.Handler()
            catcher.emit = records.append  # type: ignore[method-assign]
            logging.getLogger("py.warnings").addHandler(catcher)
            try:
                warnings.warn("a library's warning", UserWarning, stacklevel=1)  # a JSON line, not raw text
            finally:
                logging.getLogger("py.warnings").removeHandler(catcher)
        assert any("a library's warning" in r.getMessage() for r in records)
        use_format("text")  # keepfit serve --log-format, after the command's logging is set up
        assert isinstance(handler.formatter, TextFormatter)
    finally:
        logging.captureWarnings(False)
        root.handlers = saved


def test_a_bad_log_format_is_one_line_for_every_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEPFIT_LOG_FORMAT", "yaml")
    assert main(["list-models"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown log format 'yaml' (KEEPFIT_LOG_FORMAT): use text or json"


def test_progress_bars_only_at_a_terminal_and_never_among_json_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training's and evaluation's bars were drawn among JSON log lines (and glued a line to themselves)."""
    from model.logs import progress_bars

    monkeypatch.delenv("KEEPFIT_LOG_FORMAT", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress_bars()
    monkeypatch.setenv("KEEPFIT_LOG_FORMAT", "json")
    assert not progress_bars()
    monkeypatch.setenv("KEEPFIT_LOG_FORMAT", "text")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress_bars()
