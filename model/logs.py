"""Log lines of every ``keepfit`` command and of the server: plain text (the default) or one JSON object per line.

``KEEPFIT_LOG_FORMAT=json`` is for log collectors (Loki, Elasticsearch, CloudWatch, ``docker compose logs`` piped
to ``jq``): each line is an object with ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``; an
exception's traceback in ``exception``; the access log's ``client``, ``method``, ``path`` and ``status`` as
fields of their own; and the fields of :data:`log_context` (the service puts each request's ``request_id``
there, so every line a request causes, on any thread, names it).  Plain text appends them in brackets.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from model.errors import KeepfitError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # every command's, and the server's access log
LOG_FORMATS = ("text", "json")
HANDLER = "keepfit"  # the name of the stderr handler setup_logging installs

# Fields every line logged in this context carries (the service: {"request_id": ...} for the request being
# served). Threads that run a request's work see them when they run it in the request's context, as the
# service's model pool does (contextvars.copy_context).
log_context: ContextVar[Mapping[str, str]] = ContextVar("keepfit_log_context", default=MappingProxyType({}))

# What a LogRecord has of its own (and uvicorn's ANSI-coloured copy of a message); any other attribute came
# from ``extra=`` and becomes a JSON field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName", "color_message"}
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")  # uvicorn.access's arguments, in order


@contextmanager
def logging_fields(**fields: str) -> Iterator[None]:
    """Every line logged inside the block (and in work it hands to threads in its context) carries ``fields``."""
    token = log_context.set({**log_context.get(), **fields})
    try:
        yield
    finally:
        log_context.reset(token)


class TextFormatter(logging.Formatter):
    """:data:`LOG_FORMAT`, then the context's fields: ``... 200 [request_id=3f2a...]``."""

    def __init__(self, fmt: str | None = LOG_FORMAT, **kwargs: Any) -> None:
        super().__init__(fmt, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = log_context.get()
        if not fields:
            return line
        tag = " ".join(f"{k}={v}" for k, v in fields.items())
        head, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{head} [{tag}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (a traceback is a field, never lines of its own)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            out.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        out.update(log_context.get())
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def log_format(name: str | None = None) -> str:
    """The format named (default ``KEEPFIT_LOG_FORMAT``, else text); an unknown one is a :class:`KeepfitError`."""
    value = (name or os.environ.get("KEEPFIT_LOG_FORMAT") or "text").strip().lower()
    if value not in LOG_FORMATS:
        raise KeepfitError(f"unknown log format {value!r} (KEEPFIT_LOG_FORMAT): use text or json")
    return value


def formatter(name: str | None = None) -> logging.Formatter:
    """The formatter of :func:`log_format` ``(name)``."""
    return JsonFormatter() if log_format(name) == "json" else TextFormatter()


def use_format(fmt: str | None = None) -> None:
    """Switch the lines of :func:`setup_logging`'s handler to format ``fmt`` (``keepfit serve --log-format``
    names it after the command's logging is set up)."""
    chosen = formatter(fmt)
    for handler in logging.getLogger().handlers:
        if handler.get_name() == HANDLER:
            handler.setFormatter(chosen)
    # a library's warning is a line of JSON too, not raw text among them
    logging.captureWarnings(isinstance(chosen, JsonFormatter))


def progress_bars() -> bool:
    """Whether a command may draw progress bars on stderr: only for a person at a terminal, and never among JSON
    lines (a bar's carriage returns glued a log line to it, and a collector could parse neither)."""
    try:
        return sys.stderr.isatty() and log_format() == "text"
    except KeepfitError:
        return False


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Log lines to stderr at ``level`` (default ``KEEPFIT_LOG_LEVEL``, else INFO) in format ``fmt`` (default
    ``KEEPFIT_LOG_FORMAT``, else text); an unknown level or format is a :class:`KeepfitError` naming the
    variable."""
    name = (level or os.environ.get("KEEPFIT_LOG_LEVEL") or "INFO").strip().upper()
    if name not in logging.getLevelNamesMapping():
        raise KeepfitError(f"unknown log level {name!r} (KEEPFIT_LOG_LEVEL): use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    fmt = log_format(fmt)  # refused before anything is set up
    handler = logging.StreamHandler()
    handler.set_name(HANDLER)
    logging.basicConfig(level=name, handlers=[handler])
    use_format(fmt)
    # faiss announces at INFO which CPU build it loaded, on every start: not news for a user of any command
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    # torch's fake-tensor cache prints its statistics at exit at INFO, after a command's own last line (an
    # interrupted export, say)
    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.WARNING)
    # Pillow at DEBUG prints every EXIF/TIFF tag it reads (a patient's name in Artist or ImageDescription, say);
    # pydicom's warnings are silenced where it is used (model/dicom.py)
    logging.getLogger("PIL").setLevel(logging.INFO)
