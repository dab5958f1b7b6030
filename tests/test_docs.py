"""The docs cannot drift from the code: every command, flag, make target, link and repository path that
README.md and docs/*.md name is checked against the repository, without running any job.

What counts as a command
  - Fenced blocks labelled ``bash``, ``sh``, ``shell`` or ``console``, and unlabelled blocks (or ``text``)
    that hold ``$ `` prompts. In a block with prompts only the prompted lines are commands (the rest is their
    output); in a ``bash``/``sh``/``shell`` block without prompts every line is. Other blocks (``python``, file
    trees, quoted output) hold no commands.
  - Code spans in the prose that start with a command word (``python``, ``python3``, ``.venv/bin/python``,
    ``make``, ``torchrun``, ``sbatch``), e.g. `python -m engine.check --quick`.
  - A line is read as the shell reads it: ``\\`` continues it, ``#`` starts a comment, ``&&``, ``||``, ``;``,
    ``|`` and ``( )`` separate commands, ``VAR=value`` prefixes and shell keywords (``do``, ``then``, ...) are
    dropped. In a usage line a ``|`` without spaces round it is an alternative (``--gallery zero|DIR``), not a
    pipe, and ``[ ]`` round flags mark them optional; pipes are written with spaces (``a | b``).

What is checked
  - ``python SCRIPT.py …``: the script exists; ``python -m MODULE …``: the module is a file of the repository
    (other modules, e.g. ``venv``, ``pip``, ``pytest``, are not ours and are skipped). The entry's parser is
    the real one: the entry is executed as ``__main__`` with ``parse_args`` patched to hand back the parser
    instead of parsing (a BaseException, which the scripts' error handler lets through), so no job starts and
    pre-parsers (``choose_setting``'s ``parse_known_args``) see the command's own flags, e.g.
    ``--zero_version zeroshot2``. Every flag must be one of that parser's option strings, exactly as written (an
    abbreviation argparse would accept is still drift), and a value given to a flag with fixed choices must be
    one of them (each alternative of ``a|b``). Upper-case words (``RUN``, ``DIR``, ``ROOT``) and ``…`` are
    placeholders and are not checked.
  - ``python -m engine.reproduce`` / ``make reproduce ARGS="…"``: its own flags against its parser; the flags
    after ``--`` must belong to the training or the test parser of some setting asked for (``--settings``,
    default all) and not be one engine.reproduce sets itself (``MANAGED``, ``AMBIGUOUS``); ``--train_args`` /
    ``--test_args`` strings against the training / test parsers.
  - ``torchrun …`` / ``python -m torch.distributed.run …``: its flags against torch's own torchrun parser, then
    the script after them as above. ``sbatch [flags] FILE.sbatch SCRIPT [flags]``: the batch file exists and
    the script after it (the job's script, slurm/train_multinode.sbatch's convention) is checked as above;
    sbatch's own flags must be in ``SBATCH_FLAGS`` (sbatch answers no --help without a cluster's
    configuration, so its parser is not at hand).
  - ``make TARGET [VAR=value]``: the target is a rule of the Makefile and the variable is assigned there.
  - A flag in a prose code span that is not part of a command (a table row such as `--max_val_images N`) must
    be a flag of some entry point of the project, of torchrun, or of an external tool the docs use
    (``EXTERNAL_FLAGS``); ``NOT_FLAGS`` lists the few spans that quote a mistyped flag on purpose.
  - Links and pictures ``[text](target)`` / ``![alt](target)`` (and ``<img src>``/``<a href>``): a relative
    target exists (from the page's folder), and its ``#anchor`` is a heading of the target page under GitHub's
    rule (lowercase; punctuation other than ``-`` and ``_`` removed; spaces to ``-``; a repeated heading gets
    ``-1``, ``-2``, …). ``http(s)``/``mailto`` links are not fetched.
  - Page names in the prose (upper-case ``*.md`` words such as README.md) are files of the repository.
  - Repository paths: a code span or link target, or a word of a command, that starts with one of the
    project's own folders (``REPO_FOLDERS``: engine/ utils/ data/ models/ losses/ retrieval/ app/ bench/ tests/
    slurm/ docs/ .ci/), or is a top-level ``*.py`` name, ``requirements*.txt``, ``Makefile``, ``pytest.ini``,
    must exist (``*`` and ``{a,b}`` must match at least one file). Paths with placeholders (``<class>``,
    ``…``, upper-case words) and the user's folders (datasets/, checkpoint/, pretrained_model/, downloads/,
    output folders) are not checked; ``NOT_YET`` names the few files a page may name before they exist.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import glob
import io
import re
import runpy
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parent.parent

SHELL_LANGS = {"bash", "sh", "shell", "console"}
PROMPT_LANGS = {"", "text", "console"}          # blocks where `$ ` lines are commands and the rest output
COMMAND_WORDS = ("python", "python3", ".venv/bin/python", "make", "torchrun", "sbatch")
SHELL_KEYWORDS = {"do", "then", "else", "elif", "if", "while", "until", "time", "!", "{", "}", "done", "fi"}
REPO_FOLDERS = ("engine", "utils", "data", "models", "losses", "retrieval", "app", "bench", "tests", "slurm",
                "docs", ".ci")
USER_FOLDERS = ("datasets", "pretrained_model", "checkpoint")
TOP_LEVEL_FILE = re.compile(r"^(?:[\w-]+\.py|requirements[\w-]*\.txt|Makefile|pytest\.ini)$")
# Files a page may name before they exist, with the reason.
NOT_YET = {"bench/gpu_report.md": "written by the first run of bench/gpu_check.py on a GPU"}
# Flags of external tools the docs use (their parsers are not at hand here).
EXTERNAL_FLAGS = {
    "sbatch": {"--nodes", "--gpus-per-node", "--gpus-per-task", "--ntasks-per-node", "--cpus-per-task",
               "--time", "--partition", "--job-name", "--output", "--export"},
    "srun": {"--kill-on-bad-exit"},
    "pip": {"--index-url", "--quiet", "--disable-pip-version-check"},
    "gdown": {"--folder"},
    "pytest": {"--durations"},
}
SBATCH_FLAGS = EXTERNAL_FLAGS["sbatch"]
# Spans that quote a wrong flag on purpose.
NOT_FLAGS = {"--data-root": "the troubleshooting example of a mistyped flag"}

PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(?:[/:.][A-Z0-9_]*)*$|…|\.\.\.|^<.*>$")
ALT = "\x00"       # stands for a `|` between two words (an alternative, not a pipe)


def doc_pages() -> list[Path]:
    """README.md, docs/*.md and the READMEs of the user folders (datasets/, pretrained_model/, checkpoint/)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted(p for p in ROOT.glob("*/README.md") if p.parent.name in USER_FOLDERS)]


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------------------------- markdown
@dataclass
class Block:
    lang: str
    first_line: int            # line number of the first line inside the fence
    lines: list[str]


def split_markdown(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """Fenced blocks, and the prose lines (number, text) outside them."""
    blocks, prose, current = [], [], None
    fence = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
    for number, line in enumerate(text.splitlines(), 1):
        m = fence.match(line)
        if current is None and m:
            current = (m.group(2), Block(m.group(3).lower(), number + 1, []))
        elif current is not None and re.match(rf"^\s*{re.escape(current[0])}+\s*$", line):
            blocks.append(current[1])
            current = None
        elif current is not None:
            current[1].lines.append(line)
        else:
            prose.append((number, line))
    return blocks, prose


def code_spans(prose: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    for number, line in prose:
        for m in re.finditer(r"(`+)(.+?)\1", line):
            yield number, m.group(2).strip()


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)     # a link counts by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path, text: Optional[str] = None) -> set[str]:
    _, prose = split_markdown(page.read_text(encoding="utf-8") if text is None else text)
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


# ----------------------------------------------------------------------------------------- shell reading
def shell_lines(block: Block) -> Iterator[tuple[int, str]]:
    """(line number, command line with continuations joined) of a fenced block; nothing if it holds none."""
    prompted = any(line.lstrip().startswith("$ ") for line in block.lines)
    if block.lang not in SHELL_LANGS and not (block.lang in PROMPT_LANGS and prompted):
        return
    pending, start, in_command = "", 0, False
    for offset, line in enumerate(block.lines):
        number = block.first_line + offset
        stripped = line.strip()
        if not pending:
            if prompted:
                if not stripped.startswith("$ "):
                    continue
                stripped = stripped[2:]
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""
    if pending:
        yield start, pending


def commands_of(line: str) -> list[list[str]]:
    """The simple commands of one shell line, as word lists (comments, separators and VAR= prefixes gone)."""
    line = line.replace("\\|", "|")
    line = re.sub(r"(?<=[^\s|])\|(?=[^\s|])", ALT, line)    # zero|DIR: an alternative
    line = re.sub(r"\[\s*(-[^\]]*)\]", r" \1 ", line)       # [--gallery zero|DIR]: optional flags
    lexer = shlex.shlex(line, posix=True, punctuation_chars="();&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        words = list(lexer)
    except ValueError:                                       # an unbalanced quote: read it word by word
        words = line.split("#", 1)[0].split()
    commands, current = [], []
    for word in words:
        if word and set(word) <= set("();&|"):
            commands.append(current)
            current = []
        else:
            current.append(word.replace(ALT, "|"))
    commands.append(current)
    out = []
    for command in commands:
        while command and (command[0] in SHELL_KEYWORDS or re.match(r"^[A-Za-z_]\w*=", command[0])):
            command = command[1:]
        if command:
            out.append(command)
    return out


def is_placeholder(word: str) -> bool:
    return bool(PLACEHOLDER.search(word))


# ------------------------------------------------------------------------------------------------ parsers
class _Parsed(BaseException):
    """Raised by the patched parse_args: carries the parser out of the entry, past run_cli."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


class EntryError(Exception):
    pass


@lru_cache(maxsize=None)
def entry_parser(entry: str, argv: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The parser ``entry`` (a script path relative to the root, or ``-m module``) reads ``argv`` with."""
    from utils import cli

    def capture(self, args=None, namespace=None):
        raise _Parsed(self)

    is_module = entry.startswith("-m ")
    target = entry[3:] if is_module else str(ROOT / entry)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [target, *argv]
    out, err = io.StringIO(), io.StringIO()
    try:
        with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), \
                mock.patch.object(cli.ArgumentParser, "parse_args", capture), \
                warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            if is_module:
                runpy.run_module(target, run_name="__main__", alter_sys=False)
            else:
                runpy.run_path(target, run_name="__main__")
    except _Parsed as parsed:
        return parsed.parser
    except SystemExit as exc:
        raise EntryError(f"stopped before reading its flags (exit {exc.code}: "
                         f"{(err.getvalue() or out.getvalue()).strip()[:200]})") from None
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    raise EntryError("never read its flags with parse_args")


@lru_cache(maxsize=None)
def torchrun_parser() -> argparse.ArgumentParser:
    from torch.distributed.run import get_args_parser

    return get_args_parser()


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


@lru_cache(maxsize=None)
def script_parsers() -> dict[str, dict[str, argparse.ArgumentParser]]:
    """``{"train": {setting: parser}, "test": {setting: parser}}`` from engine/flags.py, as engine.reproduce
    builds them."""
    from data.registry import SETTINGS
    from engine.flags import build_test_parser, build_train_parser

    return {"train": {n: build_train_parser(s, n.split("/")[0]) for n, s in SETTINGS.items()},
            "test": {n: build_test_parser(s) for n, s in SETTINGS.items()}}


@lru_cache(maxsize=None)
def all_project_flags() -> frozenset[str]:
    flags: set[str] = set()
    for group in script_parsers().values():
        for parser in group.values():
            flags |= set(options(parser))
    for entry in [*(p.name for p in ROOT.glob("*.py") if p.name != "hubconf.py"),
                  *(f"bench/{p.name}" for p in (ROOT / "bench").glob("*.py")),
                  *(f"-m {m}" for m in ("engine.check", "engine.demo", "engine.reproduce", "data.check",
                                        "data.demo", "data.from_folders", "retrieval.tables"))]:
        with contextlib.suppress(EntryError):
            flags |= set(options(entry_parser(entry)))
    flags |= set(options(torchrun_parser()))
    for tool_flags in EXTERNAL_FLAGS.values():
        flags |= tool_flags
    return frozenset(flags)


@lru_cache(maxsize=None)
def make_rules() -> tuple[frozenset[str], frozenset[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set()
    for m in re.finditer(r"^([A-Za-z0-9_.$()/ -]+?)\s*:(?!=)", text, re.M):
        targets |= {t for t in m.group(1).split() if not t.startswith((".", "$"))}
    variables = set(re.findall(r"^([A-Za-z_]\w*)\s*[:?+]?=", text, re.M))
    return frozenset(targets), frozenset(variables)


# ---------------------------------------------------------------------------------------- command checks
@dataclass
class Checker:
    """Collects the problems of one page; ``where`` is ``page:line``."""

    problems: list[str] = field(default_factory=list)
    scripts: set = field(default_factory=set)      # (where, script) already checked as an entry

    def report(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    # flags of one parser --------------------------------------------------------------------------------
    def flags(self, where: str, name: str, parser: argparse.ArgumentParser, words: list[str]) -> None:
        known = options(parser)
        i = 0
        while i < len(words):
            word = words[i]
            i += 1
            if not re.match(r"^--?[A-Za-z]", word) or is_placeholder(word.lstrip("-")):
                continue
            flag, _, value = word.partition("=")
            action = known.get(flag)
            if action is None:
                near = parser.suggest(flag) if hasattr(parser, "suggest") else None
                hint = f" (did you mean {near}?)" if near else ""
                self.report(where, f"{flag} is not a flag of {name}{hint}")
                continue
            values = [value] if value else []
            if not value and action.nargs != 0:
                take = 1 if action.nargs in (None, "?") or isinstance(action.nargs, int) and action.nargs == 1 \
                    else (action.nargs if isinstance(action.nargs, int) else None)
                while i < len(words) and not re.match(r"^--?[A-Za-z]", words[i]) and words[i] != "--" and \
                        (take is None or len(values) < take):
                    values.append(words[i])
                    i += 1
            if action.choices is not None:
                allowed = {str(c) for c in action.choices}
                for v in values:
                    bad = [alt for alt in v.split("|") if alt and not is_placeholder(alt) and alt not in allowed]
                    if bad:
                        self.report(where, f"{flag} {v}: {', '.join(bad)} is not one of {', '.join(sorted(allowed))}"
                                           f" ({name})")

    # one simple command ------------------------------------------------------------------------------------
    def command(self, where: str, words: list[str]) -> None:
        head = words[0]
        if head.endswith("/python") or head.endswith("/python3") or re.match(r"^python(3(\.\d+)?)?$", head):
            self.python(where, words[1:])
        elif head == "make":
            self.make(where, words[1:])
        elif head == "torchrun":
            self.torchrun(where, words[1:])
        elif head == "sbatch":
            self.sbatch(where, words[1:])
        for word in words[1:]:
            if (where, word) not in self.scripts:
                self.path(where, word.partition("=")[2] if word.startswith("-") else word)

    def python(self, where: str, words: list[str]) -> None:
        i = 0
        while i < len(words) and words[i].startswith("-") and words[i] not in ("-m", "-c"):
            i += 2 if words[i] in ("-W", "-X") else 1
        if i >= len(words) or words[i] == "-c":
            return
        if words[i] == "-m":
            if i + 1 >= len(words):
                return self.report(where, "`python -m` without a module")
            self.module(where, words[i + 1], words[i + 2:])
        else:
            self.script(where, words[i], words[i + 1:])

    def module(self, where: str, module: str, args: list[str]) -> None:
        if module == "torch.distributed.run":
            return self.torchrun(where, args)
        top = module.split(".")[0]
        if not (ROOT / top).is_dir() and not (ROOT / f"{top}.py").is_file():
            return                                           # not ours (venv, pip, pytest, ...)
        path = ROOT / Path(*module.split("."))
        if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
            return self.report(where, f"python -m {module}: no module {module} in the repository")
        self.entry(where, f"-m {module}", f"python -m {module}", args)

    def script(self, where: str, script: str, args: list[str]) -> None:
        if is_placeholder(script) or "*" in script:
            return
        self.scripts.add((where, script))
        if not (ROOT / script).is_file():
            return self.report(where, f"python {script}: no such script in the repository")
        self.entry(where, Path(script).as_posix(), script, args)

    def entry(self, where: str, entry: str, name: str, args: list[str]) -> None:
        own = args[:args.index("--")] if "--" in args else args
        concrete = tuple(w for w in own if not is_placeholder(w))
        try:
            parser = entry_parser(entry, concrete)
        except EntryError as exc:
            return self.report(where, f"{name}: {exc}")
        self.flags(where, name, parser, own)
        if entry == "-m engine.reproduce":
            self.reproduce_pass_through(where, parser, args)
        elif "--" in args:
            self.report(where, f"{name}: `--` passes nothing on here")

    def reproduce_pass_through(self, where: str, parser: argparse.ArgumentParser, args: list[str]) -> None:
        from engine.reproduce import AMBIGUOUS, MANAGED, setting_of

        own = args[:args.index("--")] if "--" in args else args
        asked = None
        if "--settings" in own:
            i = own.index("--settings") + 1
            asked = []
            while i < len(own) and not own[i].startswith("-"):
                asked.append(own[i])
                i += 1
        parsers = script_parsers()
        names = [setting_of(s).name for s in asked] if asked else list(parsers["train"])
        train = [parsers["train"][n] for n in names]
        test = [parsers["test"][n] for n in names]
        pass_through = args[args.index("--") + 1:] if "--" in args else []
        for word in own:
            for key, group in (("--train_args", train), ("--test_args", test)):
                if word.startswith(key + "="):
                    self.pass_flags(where, shlex.split(word.split("=", 1)[1]), group, key, MANAGED, ())
        self.pass_flags(where, pass_through, train + test, "the flags after --", MANAGED, AMBIGUOUS)

    def pass_flags(self, where, words, parsers, what, managed, ambiguous) -> None:
        for word in words:
            if not word.startswith("--"):
                continue
            flag = word.split("=", 1)[0]
            if flag[2:] in managed:
                self.report(where, f"engine.reproduce, {what}: {flag} is set by engine.reproduce itself")
            elif flag[2:] in ambiguous:
                self.report(where, f"engine.reproduce, {what}: {flag} must go in --train_args or --test_args")
            elif not any(flag in options(p) for p in parsers):
                self.report(where, f"engine.reproduce, {what}: {flag} is not a flag of the training or test "
                                   f"scripts of the settings asked for")

    def make(self, where: str, words: list[str]) -> None:
        targets, variables = make_rules()
        for word in words:
            if word.startswith("-"):
                continue
            name, eq, value = word.partition("=")
            if eq:
                if name not in variables:
                    self.report(where, f"make {name}=…: the Makefile has no variable {name}")
                elif name == "ARGS":
                    self.module(where, "engine.reproduce", shlex.split(value))
            elif not is_placeholder(word) and word not in targets:
                self.report(where, f"make {word}: the Makefile has no target {word}")

    def torchrun(self, where: str, words: list[str]) -> None:
        parser = torchrun_parser()
        known = options(parser)
        i = 0
        while i < len(words) and words[i].startswith("-"):
            flag = words[i].split("=", 1)[0]
            action = known.get(flag)
            if action is None:
                self.report(where, f"{flag} is not a flag of torchrun")
            i += 1 if ("=" in words[i] or action is None or action.nargs == 0) else 2
        if i < len(words):
            self.script(where, words[i], words[i + 1:])

    def sbatch(self, where: str, words: list[str]) -> None:
        batch = next((i for i, w in enumerate(words) if w.endswith(".sbatch")), None)
        if batch is None:
            return self.report(where, "sbatch without a .sbatch file")
        for word in words[:batch]:
            if word.startswith("--") and word.split("=", 1)[0] not in SBATCH_FLAGS:
                self.report(where, f"{word.split('=', 1)[0]} is not in the sbatch flags this test knows "
                                   f"(tests/test_docs.py, SBATCH_FLAGS)")
        if not (ROOT / words[batch]).is_file():
            return self.report(where, f"sbatch {words[batch]}: no such file in the repository")
        if batch + 1 < len(words):
            self.script(where, words[batch + 1], words[batch + 2:])

    # paths and prose flags -----------------------------------------------------------------------------------
    def path(self, where: str, word: str) -> None:
        word = word.strip().rstrip(".,;:)")
        word = re.sub(r"#.*$", "", word)
        if not word or word.startswith(("/", "~", "http:", "https:")) or " " in word:
            return
        first = word.split("/", 1)[0]
        if "/" in word:
            if first not in REPO_FOLDERS:
                return
        elif not TOP_LEVEL_FILE.match(word):
            return
        if re.search(r"<|>|…|\.\.\.|\$", word) or any(is_placeholder(part) for part in word.split("/") if part):
            return
        if word in NOT_YET:
            return
        for candidate in expand_braces(word):
            if not glob.glob(str(ROOT / candidate)):
                self.report(where, f"{candidate}: no such file or folder in the repository")

    def prose_flags(self, where: str, span: str) -> None:
        for flag in re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", span.replace("\\|", "|")):
            if flag in NOT_FLAGS or is_placeholder(flag[2:]):
                continue
            if flag not in all_project_flags():
                near = difflib.get_close_matches(flag, sorted(all_project_flags()), n=1, cutoff=0.75)
                hint = f" (did you mean {near[0]}?)" if near else ""
                self.report(where, f"{flag} is not a flag of any entry point{hint}")


def expand_braces(word: str) -> list[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not m:
        return [word]
    return [w for part in m.group(1).split(",") for w in expand_braces(word[:m.start()] + part + word[m.end():])]


def is_command_span(span: str) -> bool:
    span = span[2:] if span.startswith("$ ") else span
    return any(span == w or span.startswith(w + " ") for w in COMMAND_WORDS)


# ------------------------------------------------------------------------------------------------- checks
def check_page(page: Path, text: Optional[str] = None) -> list[str]:
    """Every problem of one page (``text`` overrides the file's content: the self-tests use it)."""
    text = page.read_text(encoding="utf-8") if text is None else text
    checker = Checker()
    blocks, prose = split_markdown(text)
    name = rel(page)
    for block in blocks:
        for number, line in shell_lines(block):
            for words in commands_of(line):
                checker.command(f"{name}:{number}", words)
    for number, span in code_spans(prose):
        where = f"{name}:{number}"
        if is_command_span(span):
            for words in commands_of(span[2:] if span.startswith("$ ") else span):
                checker.command(where, words)
        else:
            checker.prose_flags(where, span)
            checker.path(where, span)
    for number, line in prose:
        for mentioned in re.findall(r"(?<![\w/.`-])([A-Z][A-Z0-9_-]*\.md)\b", re.sub(r"`[^`]*`", "", line)):
            if not ((ROOT / mentioned).is_file() or (page.parent / mentioned).is_file()):
                checker.report(f"{name}:{number}", f"{mentioned}: no such page in the repository")
        targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line)
        targets += re.findall(r"<(?:img|a)\b[^>]*?(?:src|href)=\"([^\"]+)\"", line)
        for target in targets:
            check_link(checker, page, f"{name}:{number}", target, text)
    return checker.problems


def check_link(checker: Checker, page: Path, where: str, target: str, text: str) -> None:
    if re.match(r"^[a-z]+:", target):
        return
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if path and not file.exists():
        return checker.report(where, f"link {target}: {path} does not exist")
    if path:
        checker.path(where, file.relative_to(ROOT).as_posix() if file.is_relative_to(ROOT) else path)
    if anchor:
        if file.suffix != ".md":
            return checker.report(where, f"link {target}: an anchor into a file that is not a page")
        if anchor not in (anchors(file, text) if file == page else anchors(file)):
            return checker.report(where, f"link {target}: {rel(file)} has no heading #{anchor}")


# -------------------------------------------------------------------------------------------------- tests
def test_the_docs_name_only_what_exists():
    """Every command, flag, target, link, anchor and path of README.md and docs/*.md (see the docstring)."""
    problems = [p for page in doc_pages() for p in check_page(page)]
    assert problems == [], "the docs have drifted from the code:\n" + "\n".join(problems)


def test_the_docs_hold_commands_at_all():
    """The checker finds the pages' commands (a parsing slip must not make the test above pass vacuously)."""
    found = []
    for page in doc_pages():
        blocks, prose = split_markdown(page.read_text(encoding="utf-8"))
        found += [w for b in blocks for _, line in shell_lines(b) for w in commands_of(line)]
    heads = {words[0] for words in found}
    assert {"make", "python", "torchrun"} <= heads
    assert sum(words[0] == "python" for words in found) >= 20


def test_the_readmes_published_rows_are_those_of_the_csv():
    """The README's results tables show retrieval/published_results.csv as it is: every method and value of the CSV
    under the header of its setting and metric ("Sketchy Ext mAP@all", ...), an empty cell where the CSV has none."""
    import csv

    labels = {"Sketchy Ext": "sketchy/zeroshot1", "Sketchy split": "sketchy/zeroshot2", "TU-Berlin Ext": "tuberlin/zeroshot",
              "QuickDraw Ext": "quickdraw/zeroshot"}
    with open(ROOT / "retrieval" / "published_results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    shown: dict[tuple[str, str], str] = {}
    header = None
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif header[0] == "method" and not set(line) <= set("|-: "):
            for title, value in zip(header[1:], cells[1:]):
                label, _, metric = title.rpartition(" ")
                if label in labels:
                    shown[(cells[0], f"{labels[label]} {metric}")] = value
    columns = [c for c in rows[0] if c not in ("method", "source")]
    for row in rows:
        for column in columns:
            assert shown.get((row["method"], column)) == row[column], \
                f"README.md's results: {row['method']}, {column} shows {shown.get((row['method'], column))!r}, " \
                f"the CSV {row[column]!r}"


def test_the_public_sizes_in_datasets_md_are_those_engine_check_compares_against():
    """docs/datasets.md's table of the public packages' sizes and data/check.py's PUBLIC_LIST_SIZES agree: every
    exact count of the page is the one the check uses, and every count the check uses is on the page."""
    from data.check import PUBLIC_LIST_SIZES

    roles = {"train sketches": "sketch_train", "train photos": "photo_train", "val sketches": "sketch_test",
             "queries": "sketch_zero", "gallery": "photo_zero"}
    text = (ROOT / "docs" / "datasets.md").read_text(encoding="utf-8")
    section = text[text.index("### The public packages' sizes"):].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    seen = set()
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        setting = cells["split dir"].strip("`").lower()
        expected = PUBLIC_LIST_SIZES[setting]
        seen.add(setting)
        for column, role in roles.items():
            m = re.match(r"^([\d,]+)(?:\s|$)", cells[column])
            page = int(m.group(1).replace(",", "")) if m else None
            assert page == expected.get(role), f"docs/datasets.md, {setting} {column}: {cells[column]!r}, " \
                                               f"data/check.py: {expected.get(role)}"
    assert seen == set(PUBLIC_LIST_SIZES)


def test_the_readme_starts_with_the_two_commands_and_ci_runs_its_test_command():
    blocks, _ = split_markdown((ROOT / "README.md").read_text(encoding="utf-8"))
    first = [w for _, line in shell_lines(blocks[0]) for w in commands_of(line)]
    assert first[:2] == [["make", "demo"], ["make", "test"]]
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-1].strip() == "make test"


SYNTHETIC = """# Page

## Train it

```bash
python train_sketchy_ext.py --max_val_imagez 10 --epochs 2   # a flag renamed
python train_sketchy_ext.py --zero_version zeroshot2 --epoch 2
python -m engine.reproduce --seeds 0 -- --amp --seed 3 --no_such_flag
make reproduce ARGS="--seedz 0"
make no_such_target
torchrun --nproc_per_node=2 --no_such_torchrun_flag train_tuberlin_ext.py --device cpu
sbatch --nodes 2 slurm/train_multinode.sbatch train_quickdraw_ext.py --resumee
python test_sketchy_ext_zeroshot.py --mode 3
python no_such_script.py
```

```
$ python -m engine.check --quik
engine.check output --not_a_command_line
```

A table row: `--max_val_imagez N`; a file `engine/no_such_module.py`; [a link](#no-such-heading),
[another](docs/no_such_page.md), [good](#train-it), ![a picture](docs/img/no_such.png).
"""


def test_the_checker_reports_drift(tmp_path):
    """A page with one mistake of each kind: each is reported with its line, and nothing else is."""
    problems = check_page(ROOT / "SYNTHETIC.md", SYNTHETIC)
    text = "\n".join(problems)
    expected = [
        ("SYNTHETIC.md:6:", "--max_val_imagez is not a flag of train_sketchy_ext.py"),
        ("SYNTHETIC.md:7:", "--epoch is not a flag of train_sketchy_ext.py"),
        ("SYNTHETIC.md:8:", "--seed is set by engine.reproduce itself"),
        ("SYNTHETIC.md:8:", "--no_such_flag is not a flag of the training or test scripts"),
        ("SYNTHETIC.md:9:", "--seedz is not a flag of python -m engine.reproduce"),
        ("SYNTHETIC.md:10:", "the Makefile has no target no_such_target"),
        ("SYNTHETIC.md:11:", "--no_such_torchrun_flag is not a flag of torchrun"),
        ("SYNTHETIC.md:12:", "--resumee is not a flag of train_quickdraw_ext.py"),
        ("SYNTHETIC.md:13:", "--mode 3: 3 is not one of 1, 2"),
        ("SYNTHETIC.md:14:", "no_such_script.py: no such script"),
        ("SYNTHETIC.md:18:", "--quik is not a flag of python -m engine.check"),
        ("SYNTHETIC.md:22:", "--max_val_imagez is not a flag of any entry point"),
        ("SYNTHETIC.md:22:", "engine/no_such_module.py: no such file"),
        ("SYNTHETIC.md:22:", "#no-such-heading"),
        ("SYNTHETIC.md:23:", "docs/no_such_page.md does not exist"),
        ("SYNTHETIC.md:23:", "docs/img/no_such.png does not exist"),
    ]
    for where, what in expected:
        assert any(p.startswith(where) and what in p for p in problems), f"not reported: {where} {what}\n{text}"
    assert len(problems) == len(expected), text


@pytest.mark.parametrize("line, commands", [
    ("python a.py --x 1 && python b.py --y  # comment", [["python", "a.py", "--x", "1"], ["python", "b.py", "--y"]]),
    ("OMP_WAIT_POLICY=PASSIVE make demo", [["make", "demo"]]),
    ("python search_app.py --resume_dir RUN [--gallery zero|DIR] [--port 7860]",
     [["python", "search_app.py", "--resume_dir", "RUN", "--gallery", "zero|DIR", "--port", "7860"]]),
    ("for d in a b; do python x.py --q; done", [["for", "d", "in", "a", "b"], ["python", "x.py", "--q"]]),
    ("make reproduce ARGS=\"--seeds 0 1 2\"", [["make", "reproduce", "ARGS=--seeds 0 1 2"]]),
    ("cat a | grep b", [["cat", "a"], ["grep", "b"]]),
])
def test_shell_lines_are_read_as_the_shell_reads_them(line, commands):
    assert commands_of(line) == commands


def test_github_slugs():
    assert slug("The whole table: `make reproduce` (`python -m engine.reproduce`)") == \
        "the-whole-table-make-reproduce-python--m-enginereproduce"
    assert slug("A CPU shared with other work (`OMP_WAIT_POLICY`)") == "a-cpu-shared-with-other-work-omp_wait_policy"
    assert slug("Multi-GPU, mixed precision, speed") == "multi-gpu-mixed-precision-speed"
