"""Every command a reader can copy from README.md and docs/*.md parses with the real command line of its job.

Scanned: fenced code blocks tagged bash, sh, shell, console or cron, and inline code spans. A line is a command
when a shell segment of it (split at `&&`, `||`, `;`, `|`, redirections) runs `unlearn SUBCOMMAND ...`
(also `.venv/bin/unlearn`, `python -m jobs.cli SUBCOMMAND`) or `python -m jobs.MODULE ...` (e.g. after
`ray job submit ... --`). Backslash continuations are joined; `$(...)` becomes one word; `# comments` are dropped.

Each command is parsed by the `parser()` of the job module that runs it (jobs/cli.py's COMMANDS; `run --family
diffusion` by jobs/diffusion.py), without running anything: no Ray, no torch work. A failure names the file, the
line and argparse's own message.

- Inline code and commands holding a bare `...` are fragments ("`unlearn run` resumes", "`unlearn sweep ...
  --trials 8`"): their flags, choices and values must parse, but missing required arguments are allowed.
- A subcommand or module written as a placeholder in capitals (`unlearn COMMAND`) is a pattern and is skipped.
- A command shown on purpose as an error is marked `docs-test: expect-error` on its line (a `# docs-test:
  expect-error` comment in a code block, `<!-- docs-test: expect-error -->` after inline code): it must fail to
  parse. Keep that rare.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import pathlib
import re
import shlex
from dataclasses import dataclass

import pytest

from jobs.cli import COMMANDS

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console", "cron"}
EXPECT_ERROR = "docs-test: expect-error"
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}
PLACEHOLDER = re.compile(r"(jobs\.)?[A-Z][A-Z_]*")  # NAME, COMMAND, jobs.NAME
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    file: str
    line: int
    text: str
    argv: tuple[str, ...]  # ("unlearn", SUBCOMMAND, ...) or ("python -m", MODULE, ...)
    fragment: bool
    expect_error: bool

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def _inline_spans(prose: list[tuple[int, str]]):
    """Inline code spans of consecutive prose lines (a span may wrap onto the next line)."""
    if not prose:
        return
    first, text = prose[0][0], "\n".join(line for _, line in prose)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        number = first + text.count("\n", 0, match.start())
        rest_of_line = text[match.end():].split("\n", 1)[0]
        marked = EXPECT_ERROR in rest_of_line
        yield number, match.group(1).replace("\n", " ") + (f"  # {EXPECT_ERROR}" if marked else ""), True


def _logical_lines(path: pathlib.Path):
    """(line number, text, inline) for each place a command can sit: joined shell lines, and inline code spans."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fence, block_lang, pending, start, prose = None, None, "", 0, []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        match = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
        if fence is None and match:
            yield from _inline_spans(prose)
            fence, block_lang, prose = match.group(1), match.group(2).lower(), []
            continue
        if fence is not None:
            if stripped.startswith(fence) and stripped.strip("`~") == "":
                if pending:
                    yield start, pending, False
                fence, block_lang, pending = None, None, ""
                continue
            if block_lang not in SHELL_BLOCKS:
                continue
            if not pending:
                start = number
            if stripped.endswith("\\") and not stripped.startswith("#"):
                pending += stripped[:-1] + " "
                continue
            yield start, pending + stripped, False
            pending = ""
            continue
        if stripped:
            prose.append((number, line))
        else:  # a blank line ends a paragraph: no code span crosses it
            yield from _inline_spans(prose)
            prose = []
    yield from _inline_spans(prose)


def _words(text: str) -> list[str] | None:
    text = re.sub(r"\$\([^()]*\)", "SUBST", text)  # $(date +%F) is one word to the command
    text = re.sub(r"(^|\s)\d*(>>?|<)&?\s*[^\s;&|()]+", " ", text)  # redirections and their targets
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split, lexer.commenters = True, "#"
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote: prose, not a command
        return None


def _segments(words: list[str]):
    segment: list[str] = []
    for word in words:
        if word in SEPARATORS:
            yield segment
            segment = []
        else:
            segment.append(word)
    yield segment


def _command(words: list[str]) -> tuple[str, ...] | None:
    """("unlearn", SUB, ...) or ("python -m", MODULE, ...) of one shell segment, else None."""
    kept = list(words)
    while kept and ASSIGNMENT.match(kept[0]):
        kept.pop(0)
    if kept[:1] in (["time"], ["exec"]):
        kept.pop(0)
    if kept[:1] and (kept[0] == "ray" or kept[0].endswith("/ray")):  # ray job submit ... -- COMMAND
        kept = kept[kept.index("--") + 1:] if "--" in kept else []
    if not kept:
        return None
    head = kept[0]
    if head == "unlearn" or head.endswith("/bin/unlearn"):
        return ("unlearn", *kept[1:])
    if re.fullmatch(r"(\S*/)?python3?(\.\d+)?", head) and kept[1:2] == ["-m"] and len(kept) > 2:
        module = kept[2]
        if module == "jobs.cli":
            return ("unlearn", *kept[3:])
        if module.startswith("jobs."):
            return ("python -m", *kept[2:])
    return None


def _argvs(words: list[str], depth: int = 0):
    """The command lines in a list of shell words, including those quoted for another shell (`ray exec ... "CMD"`)."""
    for segment in _segments(words):
        argv = _command(segment)
        if argv is not None:
            yield argv
        elif depth < 2:
            for word in segment:
                if " " in word and ("unlearn" in word or "jobs." in word):
                    yield from _argvs(_words(word) or [], depth + 1)


def commands() -> list[Command]:
    found = []
    for path in DOCS:
        for line, text, inline in _logical_lines(path):
            if "unlearn" not in text and "jobs." not in text:
                continue
            for argv in _argvs(_words(text) or []):
                if len(argv) < 2 or PLACEHOLDER.fullmatch(argv[1]):
                    continue  # `unlearn` alone, or a pattern such as `unlearn COMMAND`: not a command line
                found.append(Command(str(path.relative_to(ROOT)), line, text.split("  # " + EXPECT_ERROR)[0],
                                     argv, fragment=inline or "..." in argv, expect_error=EXPECT_ERROR in text))
    return found


MODULES = {module: name for name, (module, _) in COMMANDS.items()}


def _parser(argv: tuple[str, ...]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The job's own parser and the arguments it gets, for `unlearn SUB ...` or `python -m jobs.MODULE ...`."""
    kind, name, rest = argv[0], argv[1], [word for word in argv[2:] if word != "..."]
    if kind == "unlearn":
        if name not in COMMANDS:
            raise LookupError(f"unknown command {name!r}: `unlearn` has {', '.join(COMMANDS)}")
        module_name = COMMANDS[name][0]
    else:
        module_name = name
        if module_name not in MODULES and module_name != "jobs.diffusion":
            hint = f" (`unlearn {module_name[5:]}` is python -m " + \
                   (f"{COMMANDS[module_name[5:]][0]})" if module_name[5:] in COMMANDS else "?)")
            raise LookupError(f"no job module {module_name!r}{hint}; job modules: {', '.join(sorted(MODULES))}")
    module = importlib.import_module(module_name)
    if module_name == "jobs.diffusion":  # `python -m jobs.diffusion bench ...` is the diffusion bench
        if rest[:1] == ["bench"]:
            return module.bench_parser(), rest[1:]
        return module.parser(), rest
    if module_name == "jobs.unlearn":
        from jobs import diffusion, unlearn

        if unlearn.family(rest) == "diffusion":
            return diffusion.parser(), rest
    if module_name == "jobs.sweep" and any(word == "--resume" or word.startswith("--resume=") for word in rest):
        return module.resume_parser(), rest  # as jobs/sweep.py's main dispatches it
    if hasattr(module, "parser"):
        return module.parser(), rest
    return argparse.ArgumentParser(prog=f"unlearn {MODULES[module_name]}"), rest  # `unlearn methods` takes no flags


def _relaxed(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A copy that checks flags and values but not whether every required argument is there (fragments)."""
    parser = copy.deepcopy(parser)
    for action in parser._actions:
        action.required = False
        if action.nargs is None and isinstance(action, argparse._StoreAction):  # `--flag` named without its value
            action.nargs = "?"
        elif not action.option_strings and action.nargs == "+":
            action.nargs = "*"
    for group in parser._mutually_exclusive_groups:
        group.required = False
    return parser


def parse_error(command: Command) -> str | None:
    """argparse's message for the command, None when it parses."""
    try:
        parser, rest = _parser(command.argv)
    except LookupError as exc:
        return str(exc)
    if command.fragment:
        parser = _relaxed(parser)
    stderr, stdout = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            parser.parse_args(rest)
    except SystemExit as exc:
        if exc.code not in (0, None):  # 0: --help
            return stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else f"exit {exc.code}"
    return None


ALL = commands()


def test_the_docs_hold_commands_to_check():
    readme = [c for c in ALL if c.file == "README.md"]
    assert len(readme) >= 3 and any(c.argv[:2] == ("unlearn", "run") for c in ALL), [str(c) for c in ALL]


@pytest.mark.parametrize("command", ALL, ids=[f"{c.file}:{c.line}" for c in ALL])
def test_a_documented_command_parses(command):
    error = parse_error(command)
    if command.expect_error:
        assert error is not None, f"{command}\n  is marked '{EXPECT_ERROR}' but parses"
    else:
        assert error is None, f"{command}\n  {error}"


def test_the_checker_catches_what_it_should(tmp_path):
    """The checker itself: a wrong flag, a wrong module, a bad value and a missing argument fail; help passes."""

    def check(text, inline=False):
        argv = next(_argvs(_words(text)))
        return parse_error(Command("x.md", 1, text, argv, fragment=inline, expect_error=False))

    assert "unrecognized arguments: --no-such-flag" in check("unlearn prepare --source digits --out d --no-such-flag")
    assert "no job module 'jobs.run'" in check("python -m jobs.run --data d")
    assert "invalid int value" in check("unlearn run --data d --original o --method lotus --out r --workers two")
    assert "required" in check("unlearn run --data d --method lotus --out r")
    assert check("unlearn run --data d", inline=True) is None  # a fragment may leave required flags out
    assert check("unlearn bench --help") is None
    assert check("RAY_ADDRESS=auto ray job submit --working-dir . -- python -m jobs.bench --config c.yaml") is None
    assert check("cd /srv/unlearn && .venv/bin/unlearn methods >> log 2>&1") is None
    assert "unknown command 'frobnicate'" in check("unlearn frobnicate")
    assert "unrecognized arguments: --nope" in check(  # quoted for the head node's shell
        'ray exec cluster.yaml "cd /home/ray/unlearn && ray job submit -- python -m jobs.bench --config c --nope"')


def test_commands_are_found_in_blocks_and_wrapped_inline_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Run `unlearn run --data d\n--method lotus` now.\n\n```bash\nunlearn prepare --source digits \\\n"
                    "    --out runs/data   # a comment\n```\n\n```text\nunlearn not-a-command in output\n```\n",
                    encoding="utf-8")
    found = list(_logical_lines(page))
    assert found == [(1, "unlearn run --data d --method lotus", True),
                     (5, "unlearn prepare --source digits  --out runs/data   # a comment", False)]
