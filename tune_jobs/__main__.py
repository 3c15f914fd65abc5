"""``python -m tune_jobs STUDY [flags]``: launch a study sweep.

STUDY is a built-in study's name, ``package.module`` (its ``STUDY``) or
``package.module:ATTR``: a study in any importable module, the user's own
included.  ``python -m tune_jobs STUDY --help`` lists the flags.

``python -m tune_jobs sweeps [--experiment NAME] [--study NAME] [--status S] [--json] [--tracking-uri URI]``
lists a store's sweeps (``sweeps`` is therefore no study's name).
"""

from __future__ import annotations

import signal
import sys

from tune_jobs.cli import exit_process
from tune_jobs.study import builtin_studies


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip() + "\n\nbuilt-in studies: " + ", ".join(builtin_studies()),
              file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    if argv[0] == "sweeps":
        from tune_jobs.sweeps import main as sweeps

        return sweeps(argv[1:])
    from tune_jobs.runner import main as launch

    signal.signal(signal.SIGTERM, _stopped)  # `ray job stop`, a batch scheduler: end the sweep as Ctrl-C does
    # Ctrl-C / kill -INT stops a launch also where a shell started it in the background, with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return launch(argv[0], argv[1:])


def _stopped(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    exit_process(main(sys.argv[1:]))
