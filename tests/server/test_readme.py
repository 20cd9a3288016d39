"""The README works as written: its install is what CI runs, `lmserve serve` needs no model, and its examples run.

The examples are read out of README.md itself, so editing the README changes what is tested. They address
the server at 127.0.0.1:8000, the default address; the server here listens on a free port instead (8000
may be taken on a test machine), so that address in the examples' text is replaced with the test server's
before they run. `test_the_readme_address_is_the_serve_default` checks that the replacement changes
nothing else.

The fresh-machine install is CI's: `.ci/run` makes a new virtual environment from a clean checkout and runs
the README's install command in it, then these tests.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmserve import LLM, SamplingParams
from lmserve.models.default import DEFAULT_MODEL_DIR
from tests.server.server_process import free_port, wait_until_healthy

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
CI_SCRIPT = REPO_ROOT / ".ci" / "run"
README_ADDRESS = "127.0.0.1:8000"
SNIPPET_TIMEOUT = 120


def readme_section(title: str) -> str:
    """The text of the README's `## title` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README.read_text(), re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def code_block(section: str, language: str, containing: str, excluding: str | None = None) -> str:
    """The one ```language block of the section that contains `containing` (and not `excluding`)."""
    blocks = [
        block
        for block in re.findall(rf"^```{language}\n(.*?)^```", readme_section(section), re.MULTILINE | re.DOTALL)
        if containing in block and (excluding is None or excluding not in block)
    ]
    assert len(blocks) == 1, f"expected one {language} block with {containing!r} in '## {section}', got {blocks}"
    return blocks[0]


def words(command: str) -> list[str]:
    """A shell command's words, without its comment and without pip's `-q` (quieter, nothing else)."""
    return [word for word in shlex.split(command, comments=True) if word != "-q"]


def pip_requirements(command: list[str]) -> set[str]:
    """What `pip install ...` installs: its requirement specifiers, with `-e` joined to its path."""
    assert command[:2] == ["pip", "install"], command
    return set(" ".join(command[2:]).replace("-e ", "-e=").split())


def run_snippet(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT)


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory) -> Iterator[str]:
    """`lmserve serve` run as the README says (the installed console script), on a free port: its host:port."""
    serve_command = shlex.split(code_block("Serve", "bash", "lmserve serve", excluding="curl"))
    assert serve_command == ["lmserve", "serve"]  # no model argument
    port = free_port()
    executable = Path(sys.executable).parent / serve_command[0]  # what `pip install -e .` put on the PATH
    assert executable.exists(), f"{executable} is missing: the README's install puts it there"
    log_path = tmp_path_factory.mktemp("readme_server") / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(executable), *serve_command[1:], "--port", str(port)], cwd=log_path.parent, stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            if (failure := wait_until_healthy(process, f"http://127.0.0.1:{port}", "lmserve serve")) is not None:
                raise AssertionError(f"{failure}:\n{log_path.read_text()}")
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_readme_install_is_what_ci_runs_in_a_fresh_environment():
    install = code_block("Install", "bash", "pip install")
    *environment_steps, readme_pip = [words(step) for step in install.split("&&")]
    assert environment_steps == [["python3", "-m", "venv", ".venv"], [".", ".venv/bin/activate"]]
    assert pip_requirements(readme_pip) == {"torch==2.13.0", "-e=.[test]"}
    ci_lines = [line for line in map(words, CI_SCRIPT.read_text().splitlines()) if line]
    # CI removes any old environment, makes and activates a new one as the README does, ...
    positions = [ci_lines.index(step) for step in [["rm", "-rf", ".venv"], *environment_steps]]
    assert positions == sorted(positions)
    # ... installs at least what the README installs (CI may pin more, such as the GPU image's triton) ...
    ci_installs = [line for line in ci_lines[positions[-1] :] if line[:2] == ["pip", "install"] and "-e" in line]
    assert len(ci_installs) == 1, ci_lines
    assert pip_requirements(readme_pip) <= pip_requirements(ci_installs[0])
    # ... then runs the README's test command.
    assert words(code_block("Test", "bash", "pytest")) in ci_lines[ci_lines.index(ci_installs[0]) :]


def test_the_readme_address_is_the_serve_default():
    from lmserve.entrypoints.cli import build_parser
    from lmserve.entrypoints.cli_args import pick
    from lmserve.server.config import ServerConfig

    args = build_parser().parse_args(["serve"])
    config = ServerConfig(**pick(args, args.server_options))
    assert f"{config.host}:{config.port}" == README_ADDRESS
    assert args.model is None


def test_the_readme_curl_example_gets_a_completion_from_the_default_model(readme_server, tmp_path):
    snippet = code_block("Serve", "bash", "curl")
    assert README_ADDRESS in snippet
    result = run_snippet(["bash", "-c", snippet.replace(README_ADDRESS, readme_server)], tmp_path)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["object"] == "text_completion" and body["model"] == "default_model"
    [choice] = body["choices"]
    assert choice["text"].strip()
    # It is the embedded default model answering: the same greedy text as offline.
    request = json.loads(re.search(r"-d '(.*)'", snippet, re.DOTALL).group(1))
    llm = LLM(DEFAULT_MODEL_DIR, num_kv_blocks=64)  # a small cache: quicker to allocate, same greedy text
    params = SamplingParams(temperature=request["temperature"], max_tokens=request["max_tokens"])
    assert choice["text"] == llm.generate([request["prompt"]], params, use_tqdm=False)[0].outputs[0].text


def test_the_readme_openai_client_example_prints_a_reply(readme_server, tmp_path):
    snippet = code_block("Serve", "python", "from openai import OpenAI")
    assert README_ADDRESS in snippet
    result = run_snippet([sys.executable, "-c", snippet.replace(README_ADDRESS, readme_server)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_the_readme_offline_example_runs(tmp_path):
    snippet = code_block("Offline generation", "python", "from lmserve import LLM")
    result = run_snippet([sys.executable, "-c", snippet], tmp_path)
    assert result.returncode == 0, result.stderr
    # Each of its two prompts prints its text, then its finish reason.
    assert len(re.findall(r"(?:^| )(?:length|stop)$", result.stdout, re.MULTILINE)) >= 2, result.stdout
