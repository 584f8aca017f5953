"""Every command line of the README's code blocks runs, as written, in a fresh directory.

A command line is a line of a code block (fenced or indented) that starts with ``nfpsim-``, ``python3``
or ``python``; ``a && b`` is two. What cannot run on a CPU-only test machine is listed in ``NOT_RUN``
with the reason, and each entry must still be in the README, so the list cannot go stale. The python
code blocks run too. Every command shares one working directory, in README order, so that
``nfpsim-report outputs/`` finds the runs of the commands before it.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
ENV = {**os.environ, "MPLBACKEND": "Agg"}
COMMAND = re.compile(r"^(nfpsim-|python3? )")

# command -> why it does not run here
NOT_RUN = {
    "python3 -m pip install -e .": "installs the package: .ci/run does it on a clean clone",
    "python3 -m pip install -c constraints-cpu.txt -e '.[dev]'": "installs the package: .ci/run does it",
    "python3 -m pytest -q": "the test suite itself",
    "python3 -m pip install -e '.[gpu]'": "installs torch for a GPU machine",
    "nfpsim-calibrate": "needs a CUDA GPU (times kernels)",
    "nfpsim-validate": "needs a CUDA GPU (times real forwards)",
    "nfpsim-validate measured=<run dir>/validate.json": "needs a validate.json measured on a GPU",
    "nfpsim-nfp forward=examples/llama_eager.py:builder hardware=h200":
        "runs from the repository root, with torch (tests/capture/test_cli_forward.py runs a builder)",
    "nfpsim-search search.storage=postgresql://user@host/db search.study_name=big search.worker=1":
        "needs a PostgreSQL server (tests/search covers shared studies where CI has one)",
    "nfpsim-search search.storage=postgresql://user@host/db ray_workers=16 ray_address=auto":
        "needs a PostgreSQL server and a Ray cluster (tests/search runs Ray workers on a local head)",
}
# commands that take tens of seconds to minutes on two cores
SLOW = ("nfpsim-search", "--multirun", "workload.num_requests=500", "source=", "nfpsim-fidelity", "cluster=")


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block and every indented block outside fences."""
    blocks, fenced, lang, body, indented = [], False, "", [], []
    for line in text.splitlines():
        if line.startswith("```"):
            if fenced:
                blocks.append((lang, "\n".join(body)))
            fenced, lang, body = not fenced, line[3:].strip(), []
        elif fenced:
            body.append(line)
        elif line.startswith("    ") and line.strip():
            indented.append(line[4:])
        elif indented:
            blocks.append(("", "\n".join(indented)))
            indented = []
    if indented:
        blocks.append(("", "\n".join(indented)))
    return blocks


def readme_commands() -> list[str]:
    commands = []
    for lang, body in _code_blocks(README.read_text()):
        if lang == "python":
            continue
        for line in body.splitlines():
            line = line.split("  #")[0].strip()  # a trailing comment, two spaces in
            commands += [part.strip() for part in line.split("&&") if COMMAND.match(part.strip())]
    return list(dict.fromkeys(commands))


def readme_python() -> list[str]:
    return [body for lang, body in _code_blocks(README.read_text()) if lang == "python"]


def _param(command: str):
    marks = [pytest.mark.slow] if any(s in command for s in SLOW) else []
    if command in NOT_RUN:
        marks.append(pytest.mark.skip(reason=NOT_RUN[command]))
    return pytest.param(command, marks=marks, id=command[:70])


def test_the_readme_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert lines[1].strip().startswith("python3 -m pip install -e . && nfpsim-nfp")
    assert lines[2].strip() == "python3 -m pip install -c constraints-cpu.txt -e '.[dev]' && python3 -m pytest -q"


def test_every_command_not_run_is_still_in_the_readme():
    assert set(NOT_RUN) <= set(readme_commands())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("command", [_param(c) for c in readme_commands()])
def test_readme_command_runs(command, workdir):
    args = shlex.split(command)
    if args[0].startswith("nfpsim-"):  # the console script of this interpreter's install
        args = [sys.executable, "-m", f"nfpsim.cli.{args[0].removeprefix('nfpsim-')}", *args[1:]]
    elif args[0] in ("python", "python3"):
        args[0] = sys.executable
    if command.startswith("nfpsim-report") and not (workdir / "outputs").exists():
        pytest.skip("run with the commands before it (it reports their outputs)")
    result = subprocess.run(args, cwd=workdir, capture_output=True, text=True, env=ENV, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("code", readme_python())
def test_readme_python_runs(code, workdir):
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, env=ENV,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = result.stdout.split()
    if "simulate(" in code:  # throughput and finished requests of the 200 asked for
        assert float(first) > 0 and int(second) == 200
    else:  # the captured forward: its time and one row per kernel (mm, silu, the fp32 cast)
        assert float(first) > 0 and int(second) == 3
