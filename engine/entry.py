"""What the entry scripts call: their flags are read (no torch yet), then the engine runs.

``--help``, a mistyped flag or a bad value answers at once from engine/flags.py's parsers; only a run that will
happen imports the engine, and with it torch.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from data.registry import get_setting
from engine.flags import build_test_parser, build_train_parser, check_test_args, choose_setting


def train_entry(dataset: str, argv: Optional[Sequence[str]] = None) -> None:
    """``train_<dataset>.py``: the flags first, then the run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    build_train_parser(choose_setting(dataset, argv), dataset).parse_args(argv)
    from engine.train import main     # torch loads here
    main(dataset, argv)


def test_entry(argv: Optional[Sequence[str]], setting_name: str) -> None:
    """``test_<setting>_zeroshot.py``: the flags first and checked, then the test."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check_test_args(build_test_parser(get_setting(setting_name)).parse_args(argv))
    from engine.evaluate import main  # torch loads here
    main(argv, setting_name)
