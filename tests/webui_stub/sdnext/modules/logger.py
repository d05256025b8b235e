"""Stand-in of SD.Next's modules.logger: its own "sd" logger (SD.Next points the root logger at a NullHandler)
with SD.Next's three handlers as they behave in 058a7f0c: the console, the log file and the ring buffer that
``/sdapi/v1/log`` (the UI's log view) reads, each with SD.Next's filter (messages of 3 characters or more; a
message that cannot be formatted is dropped).

Reproduced on purpose: the ring buffer replaces ``record.msg`` with the formatted text but keeps
``record.args`` and formats the record again inside a bare ``except``, and ``traceback()`` (SD.Next's
``log.traceback``) removes the console handler and appends it again behind the ring buffer.
"""

import io
import logging

log = logging.getLogger("sdnext_stub")


class _LogFilter(logging.Filter):
    def filter(self, record):
        try:
            return len(record.getMessage()) > 2
        except Exception:
            return False


class _RingBuffer(logging.Handler):
    def __init__(self):
        super().__init__()
        self.buffer = []

    def emit(self, record):
        try:
            msg = record.getMessage()
        except Exception:
            return
        record.msg = msg.replace('"', "'")
        try:
            self.buffer.append(self.format(record))
        except Exception:
            pass


def _handler(handler):
    handler.addFilter(_LogFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler


console_stream, file_stream = io.StringIO(), io.StringIO()
console = _handler(logging.StreamHandler(console_stream))
file = _handler(logging.StreamHandler(file_stream))
ring_buffer = _handler(_RingBuffer())
log.buffer = ring_buffer.buffer
log.setLevel(logging.DEBUG)
log.propagate = False


def traceback(error):
    """SD.Next's log.traceback: prints to the console, logs the text to the file only, re-adds the console last."""
    log.removeHandler(console)
    log.critical(f"Traceback: {error!r}")
    log.addHandler(console)


log.traceback = traceback
