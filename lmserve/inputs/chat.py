"""Conversations into prompts, through the model's own chat template."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError

from lmserve.errors import InvalidRequestError


def render_chat(
    tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True, chat_template: str | None = None
) -> str:
    """The conversation as the template writes it, special tokens included (so encode it without adding any)."""
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=add_generation_prompt, tokenize=False
        )
    except (ValueError, TemplateError) as error:  # no template, or the template refuses the conversation
        raise InvalidRequestError(f"cannot apply the model's chat template: {error}") from error
