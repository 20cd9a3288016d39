"""Server-sent events: each event is one `data:` line, whatever characters its text holds."""

from __future__ import annotations

import asyncio
import json

from lmserve.server.streams import event_stream

TEXT_WITH_UNICODE_LINE_BREAKS = "a\u2028b\x85c\u2029d\ne"


async def _body(events: list[dict]) -> str:
    async def source():
        for event in events:
            yield event

    response = event_stream(source())
    return "".join([chunk async for chunk in response.body_iterator])


def test_text_with_unicode_line_breaks_stays_on_one_line_for_clients_that_split_with_splitlines() -> None:
    # httpx's iter_lines (and anything built on str.splitlines) ends a line at U+2028, U+2029 and U+0085 too.
    body = asyncio.run(_body([{"text": TEXT_WITH_UNICODE_LINE_BREAKS}, {"text": "é"}]))
    lines = [line for line in body.splitlines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert events == [{"text": TEXT_WITH_UNICODE_LINE_BREAKS}, {"text": "é"}]
    assert "é" in body  # other text is still sent as it is, not escaped
