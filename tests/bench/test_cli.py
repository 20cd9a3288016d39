"""`python -m lmserve.bench serve` end to end, against a live `lmserve serve` of the embedded default model."""

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmserve.bench.cli import add_bench_parser, config_from_args, run_bench_serve
from lmserve.entrypoints.cli import main
from tests.bench.test_report import PNG_MAGIC
from tests.server.server_process import ServerProcess, free_port

BENCH_TIMEOUT = 60  # seconds; each run below takes a few


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(None) as process:
        yield process


def bench(server: ServerProcess, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the benchmark as a subprocess; its result, and the JSON it wrote."""
    result_file = tmp_path / "result.json"
    command = [sys.executable, "-m", "lmserve.bench", "serve", "--base-url", server.url,
               "--result-file", str(result_file), *args]
    process = subprocess.run(command, capture_output=True, text=True, timeout=BENCH_TIMEOUT, cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    return process, json.loads(result_file.read_text())


def token_counters(server: ServerProcess) -> tuple[float, float]:
    return server.metric("lmserve:prompt_tokens_total"), server.metric("lmserve:generation_tokens_total")


def test_two_request_rates_report_what_the_server_counted(server: ServerProcess, tmp_path: Path):
    prompts_before, generated_before = token_counters(server)
    process, document = bench(
        server, tmp_path, "--num-prompts", "6", "--random-input-len", "16", "--random-output-len", "8",
        "--request-rate", "10", "inf", "--goodput", "ttft:60000", "e2el:60000",
    )
    prompts_after, generated_after = token_counters(server)

    assert "--request-rate 10 inf" in document["command"]
    assert document["config"]["model"] == "default_model"  # the server's only model, found in /v1/models
    assert [run["request_rate"] for run in document["runs"]] == [10.0, "inf"]
    for run in document["runs"]:
        summary = run["summary"]
        assert (summary["completed"], summary["failed"]) == (6, 0), run["requests"][0]["error"]
        assert all(request["output_tokens"] == 8 for request in run["requests"])  # ignore_eos, min_tokens
        assert all(len(request["itl"]) >= 1 and request["tpot"] > 0 for request in run["requests"])
        assert summary["goodput"]["fraction"] == 1.0
        assert summary["ttft_ms"]["p50"] <= summary["ttft_ms"]["p99"] <= summary["e2el_ms"]["p99"]
    assert sum(run["summary"]["total_input_tokens"] for run in document["runs"]) == prompts_after - prompts_before
    output_tokens = sum(run["summary"]["total_output_tokens"] for run in document["runs"])
    assert output_tokens == generated_after - generated_before == 2 * 6 * 8
    assert "TTFT mean/p50/p90/p99" in process.stdout
    png = tmp_path / "result.png"
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 0


def test_a_chat_dataset_under_a_concurrency_limit(server: ServerProcess, tmp_path: Path):
    dataset = tmp_path / "chat.jsonl"
    entries = [{"messages": [{"role": "user", "content": f"What does os.path.join do? ({n})"}], "max_tokens": 4}
               for n in range(4)]
    dataset.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    prompts_before, _ = token_counters(server)
    _, document = bench(server, tmp_path, "--endpoint", "chat", "--dataset", str(dataset), "--max-concurrency", "2",
                        "--plot-file", str(tmp_path / "chat.png"))
    (run,) = document["runs"]
    assert (run["summary"]["completed"], run["summary"]["total_output_tokens"]) == (4, 16)
    assert run["summary"]["total_input_tokens"] == token_counters(server)[0] - prompts_before
    assert (tmp_path / "chat.png").read_bytes().startswith(PNG_MAGIC)


def test_an_unknown_model_makes_failed_requests_not_a_crash(server: ServerProcess, tmp_path: Path):
    process, document = bench(server, tmp_path, "--model", "no-such-model", "--num-prompts", "3",
                              "--random-input-len", "4", "--random-output-len", "2")
    (run,) = document["runs"]
    assert (run["summary"]["completed"], run["summary"]["failed"]) == (0, 3)
    assert run["summary"]["ttft_ms"] is None
    assert all(request["error"].startswith("HTTP 404") for request in run["requests"])
    assert "some requests failed" in process.stderr
    assert (tmp_path / "result.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("args, message", [
    (["--request-rate", "0"], "--request-rate values must be positive"),
    (["--goodput", "ttft=5"], "--goodput takes NAME:MILLISECONDS"),
    (["--base-url", f"http://127.0.0.1:{free_port()}"], "could not list the models"),
])
def test_bad_options_exit_with_a_message(args: list[str], message: str, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "serve", "--num-prompts", "1", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_bench_command_plugs_into_a_cli():
    parser = argparse.ArgumentParser(prog="lmserve")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "serve", "--request-rate", "1", "inf", "--goodput", "ttft:500"])
    assert args.handler is run_bench_serve
    config = config_from_args(args)
    assert config.request_rate == [1.0, math.inf] and config.goodput == {"ttft": 500.0}
    assert (config.endpoint, config.fixed_output_len, config.max_concurrency) == ("completions", True, None)
