"""The options layer: what every ``edgetile`` command shares between its parser and the library.

This package owns the usage error and the exit codes; its modules hold the detection options and
their mapping to and from :class:`~edgetile.runtime.detector.DetectConfig` (:mod:`.detect`) and the
one "command line over file over defaults" routine that ``detect --settings`` and ``serve --config``
both use (:mod:`.files`). Importing it costs nothing: commands register with every invocation.

Exit codes: 0 every input processed (or, for the daemon, stopped by a signal); 1 some inputs failed
(the daemon: its worker failed); 2 usage errors (missing model, bad option values), with a one-line
message.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
# The daemon's 1: it processes inputs until stopped, so a failure of its worker is its "some failed".
EXIT_WORKER_FAILED = EXIT_SOME_FAILED


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "EXIT_WORKER_FAILED", "UsageError"]
