"""The JSON result (every record, the exact command, no infinities, no API key) and the PNG plot."""

import json
import math
from pathlib import Path

from lmserve.bench.client import RequestRecord
from lmserve.bench.config import BenchConfig
from lmserve.bench.metrics import summarize
from lmserve.bench.report import format_summary, plot_latency, write_result
from lmserve.bench.runner import LoadResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_result(rate: float, ttft: float) -> LoadResult:
    records = [
        RequestRecord(0, 0.0, success=True, ttft=ttft, e2e_latency=ttft + 0.4, itl=[0.1] * 4, prompt_tokens=10,
                      output_tokens=5),
        RequestRecord(1, 0.1, error="HTTP 500: boom"),
    ]
    return LoadResult(rate, records, summarize(records, duration=1.0, slos_ms={"ttft": 200.0}))


CONFIG = BenchConfig(model="m", api_key="secret-key", request_rate=[2.0, math.inf], goodput={"ttft": 200.0})
RESULTS = [load_result(2.0, 0.1), load_result(math.inf, 0.3)]


def test_the_json_holds_the_command_config_records_and_summaries(tmp_path: Path):
    path = tmp_path / "result.json"
    write_result(path, "lmserve bench serve --api-key secret-key --request-rate 2 inf", CONFIG, RESULTS)
    document = json.loads(path.read_text())  # strict JSON: an infinite rate is the string "inf"
    assert "secret-key" not in path.read_text()
    assert document["command"] == "lmserve bench serve --api-key *** --request-rate 2 inf"
    assert document["config"]["request_rate"] == [2.0, "inf"]
    assert [run["request_rate"] for run in document["runs"]] == [2.0, "inf"]
    first = document["runs"][0]
    assert first["summary"]["completed"] == 1 and first["summary"]["failed"] == 1
    assert first["summary"]["goodput"]["good_requests"] == 1
    assert first["requests"][0]["tpot"] == 0.1
    assert first["requests"][1]["error"] == "HTTP 500: boom"
    assert document["runs"][1]["summary"]["goodput"]["good_requests"] == 0


def test_the_plot_is_a_png(tmp_path: Path):
    path = tmp_path / "plot.png"
    plot_latency(path, CONFIG, RESULTS)
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 10_000


def test_the_summary_names_the_first_error():
    text = format_summary(RESULTS[0])
    assert "1 / 1" in text and "HTTP 500: boom" in text and "TTFT" in text
