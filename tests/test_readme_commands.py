"""Every `python -m benchmarks.NAME ...` command in the README parses with that benchmark's own options: a
documented command that its program refuses (an option renamed, a value that argparse reads as an option) is a
broken reproduction recipe. Each command's arguments go through the benchmark's real parser, and the benchmark
is stopped right after parsing, before it does any work."""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The benchmark commands of the README's code blocks (lines joined at a trailing backslash) and inline code
    (spans may wrap over lines)."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        found += [line.strip() for line in block.replace("\\\n", " ").splitlines() if "python -m benchmarks." in line]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [" ".join(span.split()) for span in re.findall(r"`([^`]*python -m benchmarks\.[^`]*)`", prose)]
    return [one for command in found for one in alternatives(command)]


def alternatives(command: str) -> list[str]:
    """`... train gpt|lstm` is two commands written as one: each of them."""
    m = re.search(r"(?<=\s)(\w[\w-]*(?:\|\w[\w-]*)+)(?=\s|$)", command)
    if not m:
        return [command]
    return [one for word in m.group(1).split("|")
            for one in alternatives(command[:m.start()] + word + command[m.end():])]


COMMANDS = readme_commands()


class Parsed(Exception):
    pass


def test_the_readme_documents_benchmark_commands():
    assert len(COMMANDS) >= 30 and any("--suffix" in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{i}-{c.split('benchmarks.')[1].split()[0]}" for i, c in
                                                  enumerate(COMMANDS)])
def test_a_readme_benchmark_command_parses(command, monkeypatch):
    words = shlex.split(command.split("#")[0])
    words = words[words.index("-m") + 1:]
    module = importlib.import_module(words[0])
    parse_args, parse_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    depth = {"n": 0}

    def stop_after_parse_args(self, args=None, namespace=None):
        depth["n"] += 1
        try:
            ns = parse_args(self, args, namespace)  # exits 2 with argparse's message on a bad command
        finally:
            depth["n"] -= 1
        raise Parsed(ns)

    def stop_after_parse_known_args(self, args=None, namespace=None):
        result = parse_known(self, args, namespace)
        if depth["n"]:  # inside parse_args (or a sub-command's parser): let it finish
            return result
        raise Parsed(result)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after_parse_args)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop_after_parse_known_args)
    monkeypatch.setattr(sys, "argv", [f"{words[0]}.py", *words[1:]])
    try:
        module.main()
    except Parsed:
        return
    except SystemExit as e:
        pytest.fail(f"the README's `{command}` is refused by its benchmark (exit {e.code})")
    pytest.fail(f"{words[0]}.main() returned without parsing its command line")
