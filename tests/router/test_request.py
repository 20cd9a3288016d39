"""Parsing a client's request: priority, streaming and usage options, forwarded headers, the prefix key."""

from __future__ import annotations

import json

import pytest

from lmserve.errors import InvalidRequestError
from lmserve.router.request import parse_request, prefix_key


def parse(body: object, **headers: str):
    return parse_request("POST", "/v1/completions", json.dumps(body).encode(), headers)


def test_priority_comes_from_the_body_else_the_header() -> None:
    assert parse({"prompt": "a"}).priority == 0
    assert parse({"prompt": "a"}, **{"X-Priority": "-3"}).priority == -3
    assert parse({"prompt": "a", "priority": 7}, **{"X-Priority": "-3"}).priority == 7


@pytest.mark.parametrize(("body", "headers"), [({"priority": "high"}, {}), ({"priority": True}, {}),
                                               ({}, {"x-priority": "soon"})])
def test_a_bad_priority_is_refused(body: dict, headers: dict) -> None:
    with pytest.raises(InvalidRequestError, match="priority"):
        parse(body, **headers)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff"])
def test_a_body_that_is_no_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        parse_request("POST", "/v1/completions", raw, {})


def test_hop_by_hop_headers_stay_behind_and_a_request_id_is_added() -> None:
    request = parse({"prompt": "a"}, **{"Host": "router", "Content-Length": "3", "Authorization": "Bearer k",
                                        "Accept-Encoding": "gzip"})
    assert set(request.headers) == {"authorization", "x-request-id"}
    assert parse({}, **{"X-Request-Id": "abc"}).request_id == "abc"


def test_a_stream_asks_its_replica_for_usage_unless_the_client_did() -> None:
    plain = parse({"prompt": "a"})
    assert plain.upstream_body() == plain.raw
    stream = parse({"prompt": "a", "stream": True, "stream_options": {"continuous_usage_stats": False}})
    assert not stream.client_wants_usage
    assert json.loads(stream.upstream_body())["stream_options"] == {"continuous_usage_stats": False,
                                                                      "include_usage": True}
    asked = parse({"prompt": "a", "stream": True, "stream_options": {"include_usage": True}})
    assert asked.client_wants_usage and asked.upstream_body() == asked.raw


def test_the_prefix_key_is_the_start_of_the_prompt_or_of_the_rendered_messages() -> None:
    assert prefix_key({"prompt": "abcdef"}, 4) == "abcd"
    assert prefix_key({"prompt": ["abcdef", "xyz"]}, 3) == "abc"
    assert prefix_key({"prompt": [1, 22, 333]}, 100) == "1 22 333"
    assert prefix_key({"prompt": [[1, 2], [3]]}, 100) == "1 2"
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]}]
    assert prefix_key({"messages": messages}, 100) == "system: You are terse.\nuser: Hi!"
    assert prefix_key({"messages": messages}, 6) == "system"
    assert prefix_key({"input": "x"}, 10) is None
