"""The commands the documentation shows exist and parse, and a run folder holds what the README says it holds.

Every command in the fenced shell blocks (```bash, ```sh, ```console and unlabelled ```) of README.md, docs/*.md and
benchmarks/*.md is checked without running anything:

* ``accelerate launch [flags] SCRIPT|-m MODULE ...``: the launch flags parse with accelerate's own CLI parser (the one
  ``accelerate launch --help`` prints), a ``--config_file`` is a file under accelerate_configs/, the script or module
  exists and its arguments parse as below; other ``accelerate`` subcommands must exist;
* stage 1, stage 2 and evaluation (``train_stage1.py``, ``-m cadel_modeling.train_stage1``, ``cadel-train-stage1``,
  ...): the arguments parse with cadel's own parser for that command (``parse_config``): every flag is a key of that
  command, every value coerces, ``--config`` is a preset or a file. Stage 2 and evaluation then read the model they
  point at; those folders are not looked for, but ``--stage1_dir`` / ``--eval_model`` must be given;
* other scripts and console scripts (benchmarks, ``cadel-push-to-hub``): the arguments parse with the argparse parser
  their ``main`` builds (caught before it returns), or, without a ``main``, every flag appears in ``--help``; what
  follows a bare ``--`` (``cadel-compare``: flags for stage 1 of every run) parses as stage 1's;
* ``python -m MODULE``: the module exists (and ``.py`` files named after it exist); ``python -c CODE``: it compiles;
* ``make TARGET``: a target of the Makefile.

Placeholders (``<run>``, ``/path/to/...``, ``$VAR``, ``...``) are not parsed as values, but the flag in front of one is
still checked. Line continuations, comments and ``&&`` / ``;`` / ``|`` lists are followed; ``pip``, ``cd``, ``git``
and shell built-ins are not checked; ``srun`` / ``sudo`` / ``env`` / ``time`` wrappers are unwrapped.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple
from unittest import mock

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "benchmarks").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}  # and unlabelled blocks, where only commands count
FENCE = re.compile(r"^\s*(?:```|~~~)\s*([\w+-]*)")
SEPARATORS = {"&&", "||", ";", "|", "&"}
WRAPPERS = {"srun", "sudo", "env", "time", "nohup", "exec", "mpirun"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
REDIRECT = re.compile(r"^(?:\d*>>?|&>|<)$")  # the next word is the file
ATTACHED_REDIRECT = re.compile(r"^(?:\d*>>?|&>)\S+$")  # 2>&1, >log.txt
PLACEHOLDER = re.compile(r"<[^<>\s]+>|\$|\.\.\.|…|^/?path/to\b")
CADEL_REQUIRED = {"stage2": "stage1_dir", "evaluate": "eval_model"}  # what cli.resolve_config refuses to run without
# Each of these occurs in the docs today: finding none means the extractor broke, not that the docs changed.
EXPECTED_KINDS = ("make", "python script", "accelerate launch", "accelerate launch -m", "console script")


@functools.cache
def console_scripts() -> dict:
    """{name: 'module:function'} from setup.cfg's [options.entry_points]."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO / "setup.cfg")
    lines = parser.get("options.entry_points", "console_scripts", fallback="").splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines if "=" in line)


def is_command_word(word: str) -> bool:
    return word in ("accelerate", "make") or re.fullmatch(r"python(3(\.\d+)?)?", word) is not None \
        or word.startswith("cadel-")


def is_placeholder(word: str) -> bool:
    return PLACEHOLDER.search(word) is not None


# ------------------------------------------------------------------------------------------------ extraction
@dataclasses.dataclass
class Command:
    doc: str  # path relative to the repository
    line: int  # where the command starts
    argv: List[str]
    kind: str = ""
    suffix: str = ""  # "#2", "#3" for the second and third command on one line

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}{self.suffix}"


def code_blocks(text: str) -> List[Tuple[str, List[Tuple[int, str]]]]:
    """(language, [(line number, line), ...]) of each fenced block."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence and current is None:
            current = (fence.group(1).lower(), [])
        elif fence and not fence.group(1):
            blocks.append(current)
            current = None
        elif current is not None:
            current[1].append((number, line))
    return blocks


def strip_comment(line: str) -> str:
    """The line without a shell comment (a '#' that starts a word outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def words(text: str) -> List[str]:
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    return list(lexer)


def logical_lines(lines: List[Tuple[int, str]], shell: bool):
    """(first line number, words) per logical line: continuations joined and, in shell blocks, quotes left open
    carried to the next line; ``None`` for words where a shell block's quoting never closes."""
    i = 0
    while i < len(lines):
        start, text = lines[i][0], re.sub(r"^\s*\$\s+", "", strip_comment(lines[i][1]))
        while True:
            if text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + strip_comment(lines[i][1])
                continue
            try:
                found = words(text)
            except ValueError:  # a quote opened on this line
                if shell and i + 1 < len(lines):
                    i += 1
                    text += "\n" + lines[i][1]
                    continue
                found = None if shell else []
            break
        i += 1
        yield start, found


def simple_commands(tokens: List[str]) -> List[List[str]]:
    """Split at && || ; | &, drop redirections, env assignments and wrappers (``srun ... accelerate ...``)."""
    commands, current, skip_next = [], [], False
    for token in tokens + [";"]:
        if skip_next:
            skip_next = False
        elif token in SEPARATORS or token.endswith(";"):
            if token not in SEPARATORS:
                current.append(token[:-1])
            commands.append(current)
            current = []
        elif REDIRECT.match(token):
            skip_next = True
        elif not ATTACHED_REDIRECT.match(token):
            current.append(token)
    return [unwrap(c) for c in commands]


def unwrap(argv: List[str]) -> List[str]:
    while argv and ASSIGNMENT.match(argv[0]):
        argv = argv[1:]
    if argv and argv[0] in WRAPPERS:
        inner = next((i for i, word in enumerate(argv[1:], 1) if is_command_word(word)), None)
        return unwrap(argv[inner:]) if inner else []
    return argv


def kind_of(argv: List[str]) -> Optional[str]:
    """What a command is, or None for commands this test does not check (pip, cd, git, echo, a table row ...)."""
    word, rest = argv[0], argv[1:]
    if word == "make":
        return "make"
    if word.startswith("cadel-"):
        return "console script"
    if word == "accelerate":
        if rest[:1] != ["launch"]:
            return "accelerate"
        return "accelerate launch -m" if "-m" in rest or "--module" in rest else "accelerate launch"
    if rest[:1] == ["-m"]:
        return "python -m"
    if rest[:1] == ["-c"]:
        return "python -c"
    if rest and rest[0].endswith(".py"):
        return "python script"
    return None


def extract(path: Path) -> List[Command]:
    doc = str(path.relative_to(REPO))
    found = []
    for language, lines in code_blocks(path.read_text()):
        shell = language in SHELL_LANGUAGES
        if not (shell or language == ""):
            continue
        for start, tokens in logical_lines(lines, shell):
            if tokens is None:
                found.append(Command(doc, start, [], "unparseable"))
                continue
            here = [c for c in simple_commands(tokens) if c and is_command_word(c[0])]
            for argv in here:
                kind = kind_of(argv)
                if kind:
                    found.append(Command(doc, start, argv, kind))
    # several commands on one line: doc:line, doc:line#2, ...
    seen = Counter()
    for command in found:
        seen[command.id] += 1
        if seen[command.id] > 1:
            command.suffix = f"#{seen[command.id]}"
    return found


COMMANDS = [command for doc in DOCS for command in extract(doc)]


# ------------------------------------------------------------------------------------------------ checks
class _ParserFound(Exception):
    pass


def parser_of(main) -> argparse.ArgumentParser:
    """The argparse parser ``main`` builds, caught when it parses (so nothing after that runs)."""
    def stop(self, *args, **kwargs):
        raise _ParserFound(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", stop), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", stop):
        try:
            main([]) if main.__code__.co_argcount else main()
        except _ParserFound as found:
            return found.args[0]
    pytest.fail(f"{main.__module__}.{main.__name__} returned without parsing arguments with argparse")


@functools.cache
def accelerate_parser() -> argparse.ArgumentParser:
    from accelerate.commands import accelerate_cli
    return parser_of(accelerate_cli.main)


def split_placeholders(args: List[str]) -> Tuple[List[str], List[str]]:
    """(args with placeholder values and their flags removed, the flags whose value was a placeholder); a bare
    ``...`` ("and so on") is dropped, a placeholder positional kept as it is."""
    kept, elided = [], []
    for arg in args:
        name, eq, value = arg.partition("=")
        if arg.startswith("--") and eq and is_placeholder(value):
            elided.append(name)
        elif is_placeholder(arg) and kept and kept[-1].startswith("-") and "=" not in kept[-1]:
            elided.append(kept.pop())
        elif arg not in ("...", "…"):
            kept.append(arg)
    return kept, elided


def option_names(args: List[str]) -> List[str]:
    return [arg.split("=", 1)[0] for arg in args if re.match(r"^--?[A-Za-z]", arg)]


def quiet_parse(parser: argparse.ArgumentParser, argv: List[str]) -> Tuple[Optional[argparse.Namespace], str]:
    """(namespace, '') or (None, argparse's error line)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser.parse_args(argv), ""
        except SystemExit as exc:
            if exc.code == 0:  # --help
                return None, ""
            return None, (err.getvalue().strip().splitlines() or ["?"])[-1]


def check_argparse(parser: argparse.ArgumentParser, args: List[str], what: str) -> None:
    argv, elided = split_placeholders(args)
    unknown = [flag for flag in option_names(argv) + elided if flag not in parser._option_string_actions]
    assert not unknown, f"{what} has no option {', '.join(unknown)}"
    _, error = quiet_parse(parser, argv)
    assert not error, f"{what} rejects {shlex.join(args)}: {error}"


def check_cadel(command: str, args: List[str], what: str) -> None:
    """Stage 1 resolves fully (cli.resolve_config is parse_config for it); stage 2 and evaluation parse their flags
    on their own (resolve_config would next read the model folder, which the docs' runs/... is not here)."""
    from cadel_modeling.cli import resolve_config
    from cadel_modeling.config import ConfigError, parse_config
    from cadel_modeling.config.parsing import build_parser

    argv, elided = split_placeholders(args)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cfg = resolve_config(command, argv, "")[0] if command == "stage1" else parse_config(argv, command, "")
        except ConfigError as exc:
            pytest.fail(f"{what}: {exc}")
        except SystemExit:
            pytest.fail(f"{what}: {(err.getvalue().strip().splitlines() or ['?'])[-1]}")
    options = build_parser(command, "")._option_string_actions
    unknown = [flag for flag in elided if flag not in options]
    assert not unknown, f"{what}: {', '.join(unknown)} is not a flag of {command}"
    required = CADEL_REQUIRED.get(command)
    if required:
        assert getattr(cfg, required) or f"--{required}" in elided, f"{what}: --{required} is required"


def check_module(name: str, args: List[str], what: str, function: str = "main") -> None:
    assert importlib.util.find_spec(name.split(".")[0]) and importlib.util.find_spec(name), f"{what}: no module {name}"
    if not name.startswith("cadel_modeling"):  # e.g. python -m pytest tests/x.py: the files it is given exist
        missing = [a for a in args if a.split("::")[0].endswith(".py") and not (REPO / a.split("::")[0]).exists()]
        assert not missing, f"{what}: {', '.join(missing)} not found"
        return
    check_main(importlib.import_module(name), function, args, what)


def check_main(module, function: str, args: List[str], what: str) -> None:
    main = getattr(module, function, None)
    assert callable(main), f"{what}: {module.__name__} has no {function}()"
    if hasattr(module, "run_command"):  # a cadel command: main(argv) hands its argv to cli.run_command
        seen = {}
        with mock.patch.object(module, "run_command", lambda command, *a, **k: seen.setdefault("command", command)):
            main(list(args))
        check_cadel(seen["command"], args, what)
    else:  # cadel-compare hands what follows a bare `--` to stage 1 of every run
        head, tail = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, None)
        check_argparse(parser_of(main), head, what)
        if tail is not None:
            check_cadel("stage1", tail, what)


def check_script(path: str, args: List[str], what: str) -> None:
    script = REPO / path
    assert script.is_file(), f"{what}: {path} does not exist"
    source = script.read_text()
    wrapped = re.search(r"from (cadel_modeling(?:\.\w+)+) import main", source)
    if wrapped:  # train_stage1.py & co. are thin wrappers of cadel_modeling.<command>
        return check_module(wrapped.group(1), args, what)
    if re.search(r"^def main\(", source, re.M):
        sys.path.insert(0, str(script.parent))  # as when the script runs: its folder first (benchmarks import it)
        try:
            module = importlib.import_module(script.stem)
        finally:
            sys.path.remove(str(script.parent))
        assert Path(module.__file__).resolve() == script.resolve(), f"{what}: {script.stem} imports {module.__file__}"
        return check_main(module, "main", args, what)
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=REPO,
                               timeout=300)
    assert help_text.returncode == 0, f"{what}: --help failed: {help_text.stderr[-500:]}"
    missing = [flag for flag in option_names(args) if not re.search(rf"{re.escape(flag)}\b", help_text.stdout)]
    assert not missing, f"{what}: --help does not show {', '.join(missing)}"


def check_accelerate(args: List[str], what: str) -> None:
    neutral = ["1" if is_placeholder(arg) else arg for arg in args]  # types of accelerate's flags: placeholders pass
    ns, error = quiet_parse(accelerate_parser(), neutral)
    assert not error, f"{what}: accelerate rejects {shlex.join(args)}: {error}"
    if ns is None or args[:1] != ["launch"] or not getattr(ns, "training_script", None):
        return
    config_file = ns.config_file
    if config_file and not is_placeholder(config_file):
        assert (REPO / config_file).is_file(), f"{what}: --config_file {config_file} does not exist"
        assert Path(config_file).parent == Path("accelerate_configs"), \
            f"{what}: {config_file} is not in accelerate_configs/"
    script_args = args[len(args) - len(ns.training_script_args):]
    script = args[len(args) - len(ns.training_script_args) - 1]
    if ns.module:
        check_module(script, script_args, what)
    else:
        check_script(script, script_args, what)


@functools.cache
def make_targets() -> frozenset:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        rule = re.match(r"^([^\s:#=][^:#=]*?)\s*::?(?!=)", line)
        if rule:
            targets.update(rule.group(1).split())
    return frozenset(targets)


def check(command: Command) -> None:
    word, args, what = command.argv[0], command.argv[1:], f"{command.id}: {shlex.join(command.argv)}"
    if command.kind == "make":
        missing = [t for t in args if not t.startswith("-") and "=" not in t and t not in make_targets()]
        assert not missing, f"{what}: no Makefile target {', '.join(missing)}"
    elif command.kind == "console script":
        assert word in console_scripts(), f"{what}: {word} is not a console script of setup.cfg"
        module, _, function = console_scripts()[word].partition(":")
        check_module(module, args, what, function or "main")
    elif command.kind.startswith("accelerate"):
        check_accelerate(args, what)
    elif command.kind == "python -m":
        check_module(args[1], args[2:], what)
    elif command.kind == "python -c":
        compile(args[1], what, "exec")
    else:
        check_script(args[0], args[1:], what)


# ------------------------------------------------------------------------------------------------ tests
def test_the_docs_show_commands_of_every_kind():
    """A broken extractor must not pass by finding nothing."""
    kinds = Counter(command.kind for command in COMMANDS)
    assert len(COMMANDS) >= 15, f"only {len(COMMANDS)} commands found in {[str(d) for d in DOCS]}"
    missing = [kind for kind in EXPECTED_KINDS if not kinds[kind]]
    assert not missing, f"no {', '.join(missing)} command found in the docs (found: {dict(kinds)})"
    assert any(c.doc == "README.md" for c in COMMANDS), "no command found in README.md"


@pytest.mark.parametrize("command", COMMANDS, ids=[command.id for command in COMMANDS])
def test_documented_command_exists_and_parses(command):
    assert command.kind != "unparseable", f"{command.id}: the shell quoting never closes"
    check(command)


def outputs_section(readme: str) -> Optional[str]:
    """The README's "**Outputs**" bullet or paragraph (or "## Outputs" section), up to the next one."""
    lines = readme.splitlines()
    for i, line in enumerate(lines):
        heading = re.match(r"^#+\s+Outputs\b", line, re.I)
        if not (heading or re.match(r"^\s*(?:[-*+]\s+|\d+[.)]\s+)?\*\*Outputs\b", line)):
            continue
        end = i + 1
        while end < len(lines):
            nxt = lines[end]
            if nxt.startswith("#") if heading else (
                    not nxt.strip() or nxt.startswith("#") or re.match(r"^\s*(?:[-*+]|\d+[.)])\s", nxt)):
                break
            end += 1
        return "\n".join(lines[i:end])
    return None


def documented_stage1_outputs(section: str) -> List[str]:
    """Backticked files (.json, .jsonl, .yaml, ...) and folders (ending in /) of a run folder; names with
    placeholders (``eval_<split>/``) and the folders of later commands (``stage2_*``, ``eval_*``) left out."""
    names = re.findall(r"`([^`\s]+)`", section)
    pattern = re.compile(r"^[\w.-]+(?:/[\w.-]+)*(?:\.(?:jsonl?|ya?ml|csv|log|txt|png|safetensors)|/)$")
    return [n for n in dict.fromkeys(names) if pattern.match(n) and not re.match(r"^(stage2_|eval_)", n)]


@pytest.mark.slow
def test_run_folder_holds_the_documented_outputs(trained_run):
    section = outputs_section((REPO / "README.md").read_text())
    # a failure, not a skip: the README is the only place a user learns what a run folder holds
    assert section is not None, \
        "README.md has no '**Outputs**' bullet (or 'Outputs' section) listing a run folder's files"
    names = documented_stage1_outputs(section)
    assert len(names) >= 3, f"found only {names} in the README's Outputs text:\n{section}"
    out, _ = trained_run
    missing = []
    for name in names:
        path = out / name.rstrip("/")
        exists = path.is_dir() if name.endswith("/") else path.is_file()
        if not exists and "/" not in name.rstrip("/"):  # a file named inside a folder's description
            exists = any(p.is_dir() == name.endswith("/") for p in out.rglob(name.rstrip("/")))
        if not exists:
            missing.append(name)
    assert not missing, (f"README lists {', '.join(missing)} but a stage-1 run folder has "
                         f"{sorted(p.name + '/' * p.is_dir() for p in out.iterdir())}")


def test_every_source_file_the_docs_name_exists():
    """A path like `cadel_modeling/modeling/costs.py` in a document points at a file of this checkout."""
    pattern = re.compile(r"\b((?:cadel_modeling|tests|benchmarks|tools|accelerate_configs)/[\w/.-]+\.(?:py|yaml))")
    named = {(doc.relative_to(REPO).as_posix(), path) for doc in DOCS for path in pattern.findall(doc.read_text())}
    assert len(named) >= 10  # the extractor finds the documents' paths
    missing = sorted(f"{doc}: {path}" for doc, path in named if not (REPO / path).is_file())
    assert not missing, missing
