"""The one argument parser of every script: defaults shown once, near-miss flags suggested, typed flags known.

- :class:`HelpFormatter` appends ``(default: X)`` to a flag's help unless the help already says what the
  default is (then it would be said twice);
- :class:`ArgumentParser` uses it, and answers a mistyped flag with the nearest real one
  (``--data-root`` -> ``did you mean --data_root?``);
- :func:`explicit_flags` tells which flags the user actually typed (their values, defaults left out).
"""
from __future__ import annotations

import argparse
import copy
import difflib
from typing import Any, NoReturn, Optional, Sequence

from utils.errors import EXIT_USER_ERROR


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` that never states a default twice."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "default" in help_text.lower():
            return help_text
        return super()._get_help_string(action)


def _normalised(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_").lower()


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter` and suggestions for unknown flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """A bad flag is one ``error:`` line, as every user error of the project (not argparse's usage dump)."""
        command = f"python {self.prog}" if self.prog.endswith(".py") else self.prog
        self.exit(EXIT_USER_ERROR, f"error: {message} (`{command} --help` lists the flags)\n")

    def option_strings(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def suggest(self, flag: str) -> Optional[str]:
        """The real flag nearest to ``flag`` (``--data-root`` -> ``--data_root``), or None."""
        name = flag.split("=", 1)[0]
        known = {_normalised(s): s for s in self.option_strings()}
        if _normalised(name) in known:
            return known[_normalised(name)]
        close = difflib.get_close_matches(_normalised(name), list(known), n=1, cutoff=0.75)
        return known[close[0]] if close else None

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None):  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            hints = []
            for extra in extras:
                if extra.startswith("-") and (near := self.suggest(extra)):
                    hints.append(f"{near} instead of {extra.split('=', 1)[0]}")
            hint = f" (did you mean {'; '.join(hints)}?)" if hints else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed


def explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> dict[str, Any]:
    """``{dest: value}`` of the flags present in ``argv`` only (a flag left at its default is absent)."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    parsed, _ = quiet.parse_known_args(list(argv))
    return vars(parsed)
