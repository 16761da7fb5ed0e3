"""``python -m pupsourcing``: the command line."""

import signal
import sys

# A signal while the command line imports is kept for it (see
# pupsourcing.cli.signals.pending): no traceback, the command's exit status.
_pending: list[int] = []
for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, lambda signum, frame: _pending.append(signum))

from pupsourcing.cli import main, signals  # noqa: E402

signals.pending = _pending  # the same list: also what comes until main() takes over
sys.exit(main())
