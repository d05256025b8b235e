"""Stand-in of SD.Next's modules.logger: its own "sd" logger (SD.Next points the root logger at a NullHandler)."""

import logging

log = logging.getLogger("sdnext_stub")
