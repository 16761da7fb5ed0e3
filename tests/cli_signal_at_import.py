"""A projection module that signals its own process as it is imported:
``projections run`` gets ``$SIGNAL_AT_IMPORT`` while it starts, before any
processor runs."""

from __future__ import annotations

import os
import signal
import time

from cli_projections import Recorder

os.kill(os.getpid(), signal.Signals[os.environ["SIGNAL_AT_IMPORT"]])
time.sleep(10)  # cut short by the signal, unless it is ignored

__all__ = ["Recorder"]
