"""Every command line README.md shows must parse: ``keepfit ...``, ``python -m <module> ...`` and ``make ...``.

The commands are taken from README.md itself: every line of its fenced code blocks (``\\`` continuations joined,
``# comments`` apart, ``|``, ``&&``, ``;`` separating commands) and every inline code span. Nothing is run. A
``keepfit`` line goes through the dispatcher's parser (:func:`model.cli.build_parser`: the command exists) and
then through the command's own parser: the command's entry point is called with
:meth:`argparse.ArgumentParser.parse_args` replaced by one that parses and stops (:func:`stop_at_parse`), so what
is checked is the parser the command really builds, and nothing after parsing runs. A ``python -m`` line is
checked the same way through its module's ``main``; a ``make`` line against the Makefile (each target exists,
each ``VAR=value`` is a variable it reads); a ``python path/to/script.py`` line only for the script's existence.

The rules, so that no line is skipped silently:

- A line of a code block must parse as it stands, required arguments included (*strict*). A span in the prose,
  and a line with ``...`` ("and the rest"), may name a command and some of its flags only (*fragment*): the
  command and every flag must exist and every value must be accepted; required arguments may be missing. A span
  that is only the program's name (`` `make` ``, `` `keepfit` ``) names the tool, not a command line; a span
  that ends in a flag without its value (`` `keepfit index build --images` ``) names that flag: it must exist.
- Abbreviated flags are refused (argparse would take ``--art`` for ``--artifact``, but a README should not).
- Placeholders (``DIR``, ``RUN``, ``N``...) are replaced by values of their kind from :data:`PLACEHOLDERS`
  (:data:`FLAG_PLACEHOLDERS` where one name means different things after different flags), whole words or path
  segments (``runs/RUN/model.pt``). ``[...]`` marks an optional part: it is checked, included.
- A line that lists alternatives (``fit|list|show``) is expanded by :data:`EXPANSIONS`, by its exact text.
- The flags a comment names for the command before it (``# --device cuda, --steps, --resume``) are checked too,
  each after that command's (sub)command: the flag must exist, and take the value shown when one is
  (``CSV|none``: both).
- Lines known not to parse are listed, with why, in :data:`KNOWN_README_PROBLEMS` (strict xfail: fixing the
  README makes the entry fail until it is removed).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import itertools
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

import pytest

from model.cli import build_parser, commands

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"

# README placeholder -> a value of its kind (parsing reads no file, so none of these has to exist)
PLACEHOLDERS: dict[str, str] = {
    "DIR": "/tmp/keepfit-readme/dir",
    "RUN": "full",  # a run name: runs/RUN/model.pt, --name RUN
    "PREVIOUS_ARTIFACT": "/tmp/prev/artifacts/keepfit-v2-small",
    "CSV": "pairs.csv",
    "FOLDER": "/srv/fundus",
    "N": "2",
    "STEPS": "20",
    "S": "1",
    "URL": "redis://127.0.0.1:6379/0",
    "MANIFEST:COLS": "dr_sh_600/labels.csv:dr_grade,maculopathy",
}
# (flag, placeholder) -> value, where the placeholder means different things after different flags
FLAG_PLACEHOLDERS: dict[tuple[str, str], str] = {
    ("--cast", "A"): "0.7",  # a colour-cast amplitude
    ("--letterbox", "P"): "0.3",  # a probability
    ("--path", "P"): "images/a.jpg",  # keepfit index remove --path P: an image path
}
# README text of a line or span (whitespace collapsed) -> the commands it stands for
EXPANSIONS: dict[str, list[str]] = {
    ".venv/bin/keepfit eval retrieval|few-shot|linear-probe ...": [
        ".venv/bin/keepfit eval retrieval ...",
        ".venv/bin/keepfit eval few-shot ...",
        ".venv/bin/keepfit eval linear-probe ...",
    ],
    "keepfit classifier fit|list|show|refit|delete|forget|backup|restore|scrub": [
        "keepfit classifier fit",
        "keepfit classifier list",
        "keepfit classifier show",
        "keepfit classifier refit",
        "keepfit classifier delete",
        "keepfit classifier forget",
        "keepfit classifier backup",
        "keepfit classifier restore",
        "keepfit classifier scrub",
    ],
    "keepfit import-checkpoint --format flair|keepfit-v1": [
        "keepfit import-checkpoint --format flair",
        "keepfit import-checkpoint --format keepfit-v1",
    ],
    ".venv/bin/python -m service.benchmarks.load [--index DIR] [--redis-url URL | --cache-off]": [
        ".venv/bin/python -m service.benchmarks.load --index DIR --redis-url URL",
        ".venv/bin/python -m service.benchmarks.load --index DIR --cache-off",
    ],
}
# "L<line> <command as checked>" -> why it does not parse (a finding about the README, to be fixed there)
KNOWN_README_PROBLEMS: dict[str, str] = {}

_PROGRAM_WRAPPERS = {"sudo", "env", "time", "exec"}
_OPERATORS = {"|", "||", "&&", ";", "&"}
_REDIRECTS = {">", ">>", "<", "2>", "&>"}
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_INTERESTING = re.compile(r"(?<![\w-])(keepfit|python3?|make)(?![\w-])")
_COMMENT_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


# ============================================================================================ extraction
@dataclass
class Shown:
    """One command line README.md shows, as it will be checked."""

    line: int  # where it starts in README.md
    text: str  # as the README has it (continuations joined, comment apart, whitespace collapsed)
    words: list[str]  # the command's words (a line's EXPANSIONS one by one), placeholders replaced
    strict: bool  # required arguments must be there (a code block's line without `...`)
    # flags named apart from the command (in a comment, or with no value in a fragment): (flag, values or [])
    hints: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        program = Path(self.words[0]).name
        if program == "keepfit":
            return "keepfit"
        if program == "make":
            return "make"
        return "module" if self.words[1:2] == ["-m"] else "script"

    @property
    def id(self) -> str:
        return f"L{self.line} {shlex.join(self.words)}"


def _split_comment(line: str) -> tuple[str, str]:
    """``(code, comment)``: the comment starts at a ``#`` that opens a word, outside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1 :]
    return line, ""


def _substitute(word: str, flag: str | None) -> str:
    if flag is not None and (flag, word) in FLAG_PLACEHOLDERS:
        return FLAG_PLACEHOLDERS[(flag, word)]
    if word in PLACEHOLDERS:
        return PLACEHOLDERS[word]
    return "/".join(PLACEHOLDERS.get(part, part) if len(part) > 1 else part for part in word.split("/"))


def _segments(code: str) -> list[tuple[list[str], bool]]:
    """The commands of one shell line: ``(words, fragment)``; words with placeholders replaced, ``...`` dropped."""
    lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    out: list[tuple[list[str], bool]] = []
    words: list[str] = []
    tokens = list(lexer)
    skip = False
    for token in [*tokens, ";"]:
        if skip:
            skip = False
            continue
        if token in _REDIRECTS:
            skip = True
            continue
        if token not in _OPERATORS:
            words.append(token)
            continue
        fragment = "..." in words
        words = [w.strip("[]") for w in words if w != "..."]
        while words and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or words[0] in _PROGRAM_WRAPPERS):
            words = words[1:]  # VAR=value, sudo: the program comes after
        if words and words[0] == "nice":  # nice -n 10 PROGRAM
            words = words[3:] if words[1:2] == ["-n"] else words[1:]
        if words:
            program = Path(words[0]).name
            if program != "make":  # make's VAR=value words are its own
                words = [words[0]] + [_substitute(w, words[i]) for i, w in enumerate(words[1:])]
            out.append((words, fragment))
        words = []
    return out


def _ours(words: list[str]) -> bool:
    program = Path(words[0]).name
    return program in ("keepfit", "make") or (
        re.fullmatch(r"python(3(\.\d+)?)?", program) is not None and len(words) > 1
    )


def _hints(comment: str) -> list[tuple[str, list[str]]]:
    """The flags a comment names, each with the values shown after it (``CSV|none``: two; none shown: [])."""
    out = []
    for m in _COMMENT_FLAG.finditer(comment):
        flag, rest = m.group(1), comment[m.end() :]
        values: list[str] = []
        if rest[:1] == " ":  # "--flag VALUE"; not "--flag," / "--flag:" / "--flag)"
            word = rest.split()[0] if rest.split() else ""
            if word and not word.startswith(("-", "(")):
                word = word.rstrip(",;:)")
                values = [_substitute(v, flag) for v in word.split("|")]
        out.append((flag, values))
    return out


def _blocks_and_prose(text: str) -> tuple[list[list[tuple[int, str]]], list[str]]:
    """Fenced code blocks (their numbered lines) and the prose (code block lines blanked, numbering kept)."""
    blocks: list[list[tuple[int, str]]] = []
    prose: list[str] = []
    fence: str | None = None
    for number, line in enumerate(text.split("\n"), 1):
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence = m.group(2)
                blocks.append([])
                prose.append("")
            else:
                prose.append(line)
            continue
        if m and m.group(2).startswith(fence) and not m.group(3).strip():
            fence = None
        else:
            blocks[-1].append((number, line))
        prose.append("")
    return blocks, prose


def _lines(block: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """The block's logical lines: ``\\`` continuations joined, numbered by their first line."""
    pending: tuple[int, str] | None = None
    for number, raw in block:
        start, text = pending if pending else (number, "")
        code = _split_comment(raw)[0]
        if code.rstrip().endswith("\\"):  # "cmd \" (a comment cannot follow a continuation)
            pending = (start, text + code.rstrip()[:-1] + " ")
            continue
        pending = None
        yield start, text + raw
    if pending:
        yield pending


def _shown_from(line: int, code: str, strict: bool) -> tuple[list[Shown], list[Shown]]:
    """The commands of one line or span, and those a comment on it speaks of: the last of each variant."""
    text = " ".join(code.split())
    out, last = [], []
    for variant in EXPANSIONS.get(text, [text]):
        try:
            segments = _segments(variant)
        except ValueError as err:  # an unclosed quote: no command can be read from it
            raise AssertionError(f"README.md line {line}: cannot split {variant!r}: {err}") from err
        mine = []
        for words, fragment in segments:
            if not _ours(words) or (not strict and len(words) == 1):  # a span of the program's name: a mention
                continue
            shown = Shown(line, text, words, strict and not fragment)
            if not shown.strict and len(words) > 2 and words[-1].startswith("--") and "=" not in words[-1]:
                shown.words, shown.hints = words[:-1], [(words[-1], [])]  # "`... --images`": the flag, named
            mine.append(shown)
        out.extend(mine)
        last.extend(mine[-1:])
    return out, last


def extract(text: str) -> list[Shown]:
    """Every ``keepfit``, ``python`` and ``make`` command line of a README's code blocks and code spans."""
    blocks, prose = _blocks_and_prose(text)
    shown: list[Shown] = []
    for block in blocks:
        last: list[Shown] = []  # the commands of the line above, which a comment line speaks of
        for number, logical in _lines(block):
            code, comment = _split_comment(logical)
            if not logical.strip():
                last = []
            elif code.strip():
                found, last = _shown_from(number, code, strict=True) if _INTERESTING.search(code) else ([], [])
                shown.extend(found)
            for command in last:
                command.hints.extend(_hints(comment))
    joined = "\n".join(prose)
    offset = 0
    for paragraph in re.split(r"(\n[ \t]*\n)", joined):
        for m in _CODE_SPAN.finditer(paragraph):
            span = " ".join(m.group(2).split())
            if _INTERESTING.search(span):
                number = joined.count("\n", 0, offset + m.start()) + 1
                shown.extend(_shown_from(number, span, strict=False)[0])
        offset += len(paragraph)
    return shown


# ================================================================================================ checks
class _Parsed(Exception):  # noqa: N818 - not an error: the parse succeeded, and nothing after it may run
    def __init__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
        super().__init__()
        self.parser = parser
        self.namespace = namespace


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """A parser and every subcommand parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                yield from _parsers(sub)


@contextlib.contextmanager
def stop_at_parse(fragment: bool) -> Iterator[None]:
    """Within: the first ``parse_args`` parses (no abbreviations; with ``fragment``, nothing required) and then
    raises :class:`_Parsed`, so the command that called it goes no further; a parse error exits as argparse's
    do (``SystemExit``, the message on stderr)."""
    real = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> NoReturn:
        for parser in _parsers(self):
            parser.allow_abbrev = False
            if fragment:
                for action in parser._actions:
                    action.required = False
                for group in parser._mutually_exclusive_groups:
                    group.required = False
        raise _Parsed(self, real(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_only):
        yield


def _parse(entry: Callable[[list[str]], Any], argv: list[str], fragment: bool) -> _Parsed:
    """Parse ``argv`` with the parser ``entry`` builds; :class:`AssertionError` with argparse's message if it
    refuses."""
    stderr = io.StringIO()
    try:
        with stop_at_parse(fragment), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            entry(argv)
    except _Parsed as parsed:
        return parsed
    except SystemExit:
        lines = stderr.getvalue().strip().splitlines()
        raise AssertionError(lines[-1] if lines else "exited while parsing") from None
    except Exception as err:  # e.g. `keepfit index nosuch`: the index dispatcher's own refusal
        raise AssertionError(f"{type(err).__name__}: {err}") from None
    raise AssertionError(f"{entry.__module__}.{entry.__name__} returned without parsing its arguments")


@functools.cache
def _commands() -> dict[str, tuple[str, str]]:
    return commands()  # the installed entry points: read once (a scan of every installed distribution)


def _entry(words: list[str]) -> tuple[Callable[[list[str]], Any], list[str]]:
    """The function that parses this command line's arguments, and those arguments."""
    if Path(words[0]).name == "keepfit":
        table = _commands()
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                name = build_parser(table).parse_args(words[1:]).command
        except SystemExit:
            raise AssertionError(stderr.getvalue().strip().splitlines()[-1]) from None
        module_name, func = table[name][0].split(":")
        return getattr(importlib.import_module(module_name), func), words[2:]
    if len(words) < 3:
        raise AssertionError(f"{' '.join(words)!r} names no module")
    module_name = words[2]
    try:
        spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:  # its package is missing
        spec = None
    if spec is None:
        raise AssertionError(f"no module {module_name}")
    module = importlib.import_module(module_name)
    if not callable(getattr(module, "main", None)):
        raise AssertionError(f"{module_name} has no main(argv) whose parser could be checked")
    return module.main, words[3:]


def _leaf(parsed: _Parsed) -> argparse.ArgumentParser:
    """The (sub)command parser that took the options: ``keepfit eval suite`` -> the ``suite`` parser."""
    parser = parsed.parser
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(parsed.namespace, subs[0].dest, None) if subs else None
        if name is None:
            return parser
        parser = subs[0].choices[name]


def check_python(shown: Shown) -> None:
    entry, argv = _entry(shown.words)
    parsed = _parse(entry, argv, fragment=not shown.strict)
    leaf = _leaf(parsed)
    # the flags a comment names, each alone after the command's (sub)command words (not beside the line's own
    # flags: "an --image query" is the alternative to the line's --text, not an addition)
    command = list(itertools.takewhile(lambda w: not w.startswith("-"), argv))
    for flag, values in shown.hints:
        action = leaf._option_string_actions.get(flag)
        if action is None:
            raise AssertionError(f"{flag}: no such option of {leaf.prog}")
        for extra in [[flag]] if action.nargs == 0 else [[flag, value] for value in values]:
            try:
                _parse(entry, command + extra, fragment=True)
            except AssertionError as err:
                raise AssertionError(f"{' '.join(extra)}: {err}") from None


@functools.cache
def _makefile() -> tuple[set[str], set[str]]:
    """The Makefile's targets and the variables it reads."""
    text = MAKEFILE.read_text()
    targets: set[str] = set()
    for m in re.finditer(r"^([^\t#\s=:][^:=#\n]*?)\s*:(?![=:])", text, re.M):
        targets.update(m.group(1).split())
    variables = set(re.findall(r"\$[({]([A-Za-z_][A-Za-z0-9_]*)[)}]", text))
    return targets, variables


def check_make(shown: Shown) -> None:
    targets, variables = _makefile()
    for word in shown.words[1:]:
        name, sep, _ = word.partition("=")
        if sep:
            assert name in variables, f"make variable {name} is not one the Makefile reads"
        elif not word.startswith("-"):
            assert word in targets, f"no make target {word!r}"


def check(shown: Shown) -> None:
    if shown.kind == "make":
        check_make(shown)
    elif shown.kind == "script":  # python path/to/script.py: the script must be there (its flags: not checked)
        assert (ROOT / shown.words[1]).is_file(), f"no script {shown.words[1]}"
    else:
        check_python(shown)


SHOWN = extract(README.read_text(encoding="utf-8"))


# ================================================================================================= tests
@pytest.fixture(autouse=True)
def _no_environment_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # `keepfit index` makes --artifact optional when KEEPFIT_ARTIFACT is set: the README's lines must not rely on it
    monkeypatch.delenv("KEEPFIT_ARTIFACT", raising=False)


@pytest.mark.parametrize("shown", SHOWN, ids=[s.id for s in SHOWN])
def test_readme_command_parses(shown: Shown) -> None:
    problem = KNOWN_README_PROBLEMS.get(shown.id)
    if problem is not None:
        with pytest.raises(AssertionError):
            check(shown)
        pytest.xfail(problem)
    try:
        check(shown)
    except AssertionError as err:
        pytest.fail(f"README.md line {shown.line}: {shown.text!r} does not parse: {err}", pytrace=False)


def test_readme_shows_commands_of_every_kind() -> None:
    """The extraction found the README's commands (a change to it that finds none would pass vacuously)."""
    kinds = {s.kind for s in SHOWN}
    assert {"keepfit", "module", "make"} <= kinds
    assert sum(s.strict for s in SHOWN) >= 30
    assert any(s.hints for s in SHOWN)
    ids = {s.id for s in SHOWN}
    assert set(KNOWN_README_PROBLEMS) <= ids, f"stale KNOWN_README_PROBLEMS: {set(KNOWN_README_PROBLEMS) - ids}"
    unused = set(EXPANSIONS) - {s.text for s in SHOWN}
    assert not unused, f"EXPANSIONS for text the README no longer has: {unused}"


@pytest.mark.parametrize(
    ("readme", "message"),
    [
        ("```bash\n.venv/bin/keepfit info --jsn artifacts/keepfit-v2-small\n```\n", "unrecognized arguments"),
        ("```bash\n.venv/bin/keepfit index bench --n 1000000 --dimm 512\n```\n", "unrecognized arguments"),
        ("```bash\n.venv/bin/keepfit index bench --n 1 --dim 512\n```\n", "--n"),  # a value it refuses
        ("```bash\n.venv/bin/keepfit index bench --n 1000 --dim\n```\n", "expected one argument"),
        ("```bash\n.venv/bin/keepfit infoo artifacts/keepfit-v2-small\n```\n", "invalid choice"),
        ("```bash\n.venv/bin/keepfit eval sweet --artifact A\n```\n", "invalid choice"),
        ("```bash\n.venv/bin/keepfit index serch --index I\n```\n", "unknown index command"),
        ("```bash\n.venv/bin/keepfit classify --images /a\n```\n", "required: --out"),  # strict in a code block
        ("`keepfit classify --image /a`\n", "unrecognized arguments"),  # a span: a fragment, flags still checked
        ("`keepfit index bench --dim 512 --latency 100`\n", "unrecognized arguments"),  # an abbreviation
        ("```bash\n.venv/bin/keepfit train text --name t   # --text-trainable-layer N\n```\n", "no such option"),
        ("```bash\n.venv/bin/keepfit train text --name t   # --seed x\n```\n", "invalid int value"),
        ("`keepfit index build --imagez`\n", "no such option"),
        ("```bash\n.venv/bin/python -m service.benchmarks.soak --minute 30\n```\n", "unrecognized arguments"),
        ("```bash\n.venv/bin/python -m service.benchmarks.nosuch\n```\n", "no module"),
        ("```bash\n.venv/bin/python -m servise.benchmarks.load\n```\n", "no module"),
        ("```bash\nmake serve PORTT=8080\n```\n", "not one the Makefile reads"),
        ("```bash\nmake sevre\n```\n", "no make target"),
    ],
)
def test_a_mangled_command_fails(readme: str, message: str) -> None:
    (shown,) = extract(readme)
    with pytest.raises(AssertionError, match=re.escape(message)):
        check(shown)


def test_extraction_joins_splits_and_expands() -> None:
    readme = (
        "Run `keepfit classifier fit|list|show|refit|delete|forget|backup|restore|scrub` or\n`keepfit index build\n--ray`.\n\n"
        "```bash\n"
        "mkdir -p /tmp/x && .venv/bin/keepfit info DIR | head   # --json: all\n"
        ".venv/bin/keepfit eval suite --artifact RUN/artifact \\\n"
        "    --out runs/RUN/eval      # --split val\n"
        "    # --baseline PREVIOUS_ARTIFACT\n"
        "curl -d '{\n  \"a\": 1}' localhost:8000/v1/x\n"
        "```\n"
    )
    shown = extract(readme)
    assert [s.words[1:] for s in shown] == [
        ["info", PLACEHOLDERS["DIR"]],
        ["eval", "suite", "--artifact", "full/artifact", "--out", "runs/full/eval"],
        ["classifier", "fit"],
        ["classifier", "list"],
        ["classifier", "show"],
        ["classifier", "refit"],
        ["classifier", "delete"],
        ["classifier", "forget"],
        ["classifier", "backup"],
        ["classifier", "restore"],
        ["classifier", "scrub"],
        ["index", "build"],
    ]
    assert [s.strict for s in shown] == [True, True, *[False] * 10]
    assert shown[0].hints == [("--json", [])]
    assert shown[-1].hints == [("--ray", [])]  # a fragment's last flag, with no value: named
    assert shown[1].hints == [("--split", ["val"]), ("--baseline", [PLACEHOLDERS["PREVIOUS_ARTIFACT"]])]
    assert [s.line for s in shown] == [6, 7, *[1] * 9, 2]


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("--quantize int8", "--quantise int8"),  # code blocks
        ("--min-images 5", "--min-image 5"),  # a span
        ("# --device cuda, --steps, --resume", "# --device cuda, --step, --resume"),  # a comment
        ("service.benchmarks.soak --minutes 30", "service.benchmarks.soak --minutes thirty"),  # a bad value
    ],
)
def test_the_readme_with_a_mangled_flag_fails(good: str, bad: str) -> None:
    readme = README.read_text(encoding="utf-8")
    assert good in readme

    def fails(shown: Shown) -> bool:
        try:
            check(shown)
        except AssertionError:
            return True
        return False

    failing = [s.id for s in extract(readme.replace(good, bad)) if s.id not in KNOWN_README_PROBLEMS and fails(s)]
    assert failing, f"every command still parses with {bad!r} for {good!r}"
