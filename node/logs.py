"""Logging of a node, set up from the ``logging`` config section.

    log = node_log(cfg.logging)          # a callable: log("message"), log("oops", level=logging.WARNING)
    log.set_context(peer_id="12D3KooW...", round=7)

The runtime and the swarm code log through a plain ``log(msg)`` callable (``print`` works in tests); this
module makes that callable a ``NodeLog`` that routes every line through the ``sapo`` logger with the node's
current peer id and round attached. The runtime updates the context with ``set_context`` (a no-op for a
plain callable), once per round.

Formats:
- ``text``: the console gets the bare message, exactly the human-readable lines the node always printed
  (warnings and errors prefixed); the optional file gets ``time level [peer round] message`` lines.
- ``json``: one JSON object per line, ``{"time", "level", "msg", "peer_id", "round"}``, on stdout and in the
  optional file, for log shippers (journald, docker, Loki).

The context lives on the ``NodeLog`` object, not in a global, so several nodes in one process (tests, the
simulation harness) each log their own peer id and round.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

LOGGER_NAME = "sapo"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _level(record: logging.LogRecord) -> str:
    # From the number, not record.levelname: libraries rename levels globally (hivemind: WARNING -> WARN).
    for no, name in ((logging.CRITICAL, "critical"), (logging.ERROR, "error"), (logging.WARNING, "warning"),
                     (logging.INFO, "info")):
        if record.levelno >= no:
            return name
    return "debug"


def _short(peer_id: str | None) -> str:
    return f"{peer_id[:12]}..." if peer_id else "-"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"
        return json.dumps({"time": stamp, "level": _level(record), "msg": record.getMessage(),
                           "peer_id": getattr(record, "peer_id", None), "round": getattr(record, "round", None)},
                          ensure_ascii=False)


class TextFileFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        rnd = getattr(record, "round", None)
        return (f"{stamp} {_level(record).upper():<7} [{_short(getattr(record, 'peer_id', None))} "
                f"r{rnd if rnd is not None else '-'}] {record.getMessage()}")


class RichConsoleHandler(logging.Handler):
    """The human console: the message as is (no timestamp), via rich so wide lines wrap softly."""

    def __init__(self, stream=None):
        super().__init__()
        from rich.console import Console

        self.console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                msg = f"{_level(record)}: {msg}"
            self.console.print(msg, markup=False)
        except Exception:
            self.handleError(record)


class _StdoutJsonHandler(logging.StreamHandler):
    def __init__(self):
        super().__init__(sys.stdout)

    def flush(self) -> None:  # sys.stdout may be swapped (pytest capture): always write to the current one
        self.stream = sys.stdout
        super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def setup_logging(cfg=None) -> logging.Logger:
    """Configure the ``sapo`` logger from a ``LoggingConfig`` (or defaults); replaces handlers set up earlier."""
    fmt = getattr(cfg, "format", "text")
    level = _LEVELS[getattr(cfg, "level", "info")]
    file = getattr(cfg, "file", None)
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(level)
    logger.propagate = False  # the root logger (hivemind, transformers) keeps its own format
    if fmt == "json":
        console: logging.Handler = _StdoutJsonHandler()
        console.setFormatter(JsonFormatter())
    else:
        console = RichConsoleHandler()
    logger.addHandler(console)
    if file:
        path = Path(file).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setFormatter(JsonFormatter() if fmt == "json" else TextFileFormatter())
        logger.addHandler(fh)
    return logger


class NodeLog:
    """The ``log(msg)`` callable the runtime uses, with the node's peer id and current round attached."""

    def __init__(self, logger: logging.Logger | None = None, peer_id: str | None = None, round: int | None = None):
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.context: dict = {"peer_id": peer_id, "round": round}

    def set_context(self, **fields) -> None:
        self.context.update(fields)

    def __call__(self, msg: str, level: int = logging.INFO) -> None:
        self.logger.log(level, msg, extra=dict(self.context))

    def warning(self, msg: str) -> None:
        self(msg, logging.WARNING)


def node_log(cfg=None) -> NodeLog:
    """Set up logging from ``cfg`` (a ``LoggingConfig``) and return the node's ``log`` callable."""
    return NodeLog(setup_logging(cfg))


def set_context(log, **fields) -> None:
    """Update the peer id / round of ``log`` if it carries a context (a plain ``print`` does not)."""
    setter = getattr(log, "set_context", None)
    if setter is not None:
        setter(**fields)
