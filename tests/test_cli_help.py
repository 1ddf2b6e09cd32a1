"""What a new user types first: `canaryproxy`, `--help`, and `VERB --help` for every verb."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy.cli import _parser, main

VERBS = [
    "serve", "demo", "validate", "import", "status", "history", "explain",
    "weights", "switch", "rollout", "undo", "reload",
]  # fmt: skip


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return str(capsys.readouterr().out)


def test_every_spec_verb_is_offered() -> None:
    sub = next(a for a in _parser()._actions if a.dest == "verb")
    assert sorted(sub.choices) == sorted(VERBS)  # type: ignore[arg-type]


def test_program_help_lists_every_verb_with_an_example(capsys) -> None:
    out = _help(["--help"], capsys)
    for verb in VERBS:
        assert f"\n    {verb} " in out, verb
    assert "examples:" in out and "canaryproxy weights default v2=10" in out


def test_bare_program_prints_the_verb_list(capsys) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(verb in out for verb in VERBS)


@pytest.mark.parametrize("verb", VERBS)
def test_verb_help_has_a_description_options_and_an_example(verb: str, capsys) -> None:
    out = _help([verb, "--help"], capsys)
    usage, _, rest = out.partition("\n\n")
    assert usage.startswith(f"usage: canaryproxy {verb}")
    description = rest.splitlines()[0]
    assert description.endswith(".") and len(description) > 15, description
    assert "%%" not in out
    assert f"example:\n  canaryproxy {verb}" in out
    parser = _subparser(verb)
    for action in parser._actions:  # every option and argument says what it is for
        assert action.help, f"{verb}: {action.dest} has no help text"
    if len(parser._actions) > 2:
        assert "options:" in out


def _subparser(verb: str):
    sub = next(a for a in _parser()._actions if a.dest == "verb")
    return sub.choices[verb]  # type: ignore[index]


def test_defaults_are_shown(capsys) -> None:
    out = " ".join(_help(["serve", "--help"], capsys).split())
    assert "(default: ./.canaryproxy)" in out and "(default: info)" in out
    assert "(default: 1)" in out


@pytest.mark.parametrize("level", ["loud", "verbose", "10", ""])
def test_log_level_accepts_only_real_levels(level: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "-c", "x.yaml", "--log-level", level])
    assert done.value.code == 2
    assert "debug, info, warning, error, critical" in capsys.readouterr().err


def test_log_level_is_case_insensitive() -> None:
    args = _parser().parse_args(["serve", "-c", "x.yaml", "--log-level", "WARNING"])
    assert args.log_level == "warning"


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "proxy", "--help"],
        [sys.executable, "-m", "proxy"],
        [sys.executable, "-m", "proxy", "status", "--help"],
        ["canaryproxy", "--help"],
    ],
    ids=["python -m proxy --help", "python -m proxy", "status --help", "canaryproxy --help"],
)
def test_the_installed_program_prints_help_without_a_traceback(argv: list[str]) -> None:
    if argv[0] == "canaryproxy":
        argv = [str(__import__("shutil").which("canaryproxy") or pytest.skip("not installed"))]
        argv.append("--help")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 2)
    assert "usage: canaryproxy" in done.stdout
