"""Checks shared by the tests that talk to a server over HTTP."""

from __future__ import annotations

import httpx


def assert_openai_error(
    response: httpx.Response,
    status: int,
    *words: str,
    error_type: str = "invalid_request_error",
    match_case: bool = False,
) -> str:
    """The status, OpenAI's error shape of `error_type`, and a message naming each of `words` (in any case unless
    `match_case`); returns the message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert error["code"] == status
    for word in words:
        if match_case:
            assert word in error["message"], error["message"]
        else:
            assert word.lower() in error["message"].lower(), error["message"]
    return error["message"]
