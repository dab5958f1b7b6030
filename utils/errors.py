"""User-facing errors: one clear line on stderr, a non-zero exit, no traceback."""
from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Callable, Sequence

from utils.runtime import missing_dependency


class UserError(Exception):
    """A problem with the user's input (file, line, flag); printed as one sentence."""


EXIT_USER_ERROR = 2


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    # Errors raised inside DataLoader workers come back wrapped with the worker's traceback;
    # the original message is the last line, after "<module>.<Class>: ".
    if "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(msg.split())


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, UserError):
        return True
    # DataLoader workers re-raise our UserError as a new instance of the same class.
    return type(exc).__name__ == "UserError"


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run ``main``; user errors become one line on stderr and exit status 2.

    ``--debug`` on the command line (or SBKA_DEBUG=1) shows the full traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SBKA_DEBUG") == "1"
    if not debug:  # warnings as one readable line, without the source line that raised them
        warnings.formatwarning = lambda message, category, *_, **__: f"warning: {message}\n"
    try:
        main(args)
    except KeyboardInterrupt as exc:  # a script may say more, e.g. the command that resumes a training run
        print(str(exc) or "interrupted: files already written are kept (a training run continues with --resume).",
              file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        if debug:
            traceback.print_exc()
        missing = missing_dependency(exc)
        if missing and not debug:
            print(f"error: {missing}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        if is_user_error(exc):
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        if debug:
            sys.exit(1)
        raise
