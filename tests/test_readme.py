"""The README's examples work: Python blocks run, command lines parse with the real CLI."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from milan_hf.cli import build_parser

README = Path(__file__).parent.parent / "README.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def milan_command_lines() -> list[list[str]]:
    lines = []
    for block in code_blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            for part in command.split("&&"):
                words = shlex.split(part.strip())
                if words and words[0] == "milan-hf":
                    lines.append(words[1:])
    return lines


def test_readme_has_the_two_front_door_commands():
    blocks = code_blocks("bash")
    assert any("milan-hf describe" in block and "pip install" in block for block in blocks)
    assert any("pytest" in block and "pip install" in block for block in blocks)
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    test_command = next(line.strip() for block in blocks for line in block.splitlines()
                        if "pytest" in line)
    assert test_command in ci, "CI must run exactly the README's test command"


@pytest.mark.parametrize("arguments", milan_command_lines(), ids=lambda a: " ".join(a[:1]))
def test_readme_command_lines_parse(arguments):
    parser = build_parser()
    try:
        parsed = parser.parse_args(arguments)
    except SystemExit as error:  # argparse exits on unknown options
        pytest.fail(f"README command does not parse: milan-hf {' '.join(arguments)} ({error})")
    assert parsed.command == arguments[0]


@pytest.mark.parametrize("index", range(len(code_blocks("python"))))
def test_readme_python_examples_run(index, tmp_path):
    source = code_blocks("python")[index]
    if "path/to/" in source:  # needs the reader's own data: check that it is valid Python
        compile(source, f"README block {index}", "exec")
        return
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
