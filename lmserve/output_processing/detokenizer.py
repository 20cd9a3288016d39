"""Token ids to text, incrementally: each new token costs a decode of a few tokens, not of the output."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerFast

_REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder renders for the bytes of an unfinished character
_MAX_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    """Turns one sample's token ids into text as they arrive, built on `tokenizers`' DecodeStream.

    Text ending in an unfinished multi-byte character is held back until the character is complete, so
    no piece ever carries half a character. For byte-level BPE tokenizers the pieces of `add_tokens` and
    `flush` join to exactly `tokenizer.decode(output_ids, skip_special_tokens)`. The last prompt tokens
    are decoded as context, so decoders that strip a leading space (SentencePiece style) keep the space
    the first output token starts with.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerFast, prompt_token_ids: Sequence[int], skip_special_tokens: bool
    ) -> None:
        self._backend = tokenizer.backend_tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._context_ids = self._context(prompt_token_ids)
        self._stream = DecodeStream(ids=self._context_ids, skip_special_tokens=skip_special_tokens)
        self._output_ids: list[int] = []
        self._num_emitted_chars = 0
        self._holding = False  # the stream has tokens whose text it has not returned yet

    def add_tokens(self, new_token_ids: Iterable[int]) -> str:
        """Take the next output tokens; return the text they completed (maybe "")."""
        pieces = []
        for token_id in new_token_ids:
            self._output_ids.append(token_id)
            piece = self._stream.step(self._backend, token_id)
            self._holding = piece is None
            if piece is not None:
                pieces.append(piece)
        text = "".join(pieces)
        self._num_emitted_chars += len(text)
        return text

    def flush(self) -> str:
        """At the end of the output, the held-back text as decode() renders it (U+FFFD for a cut character).

        This decodes the whole output once, so call it only when the sample finishes.
        """
        if not self._holding:
            return ""
        self._holding = False
        context_text = self._decode(self._context_ids)
        text = self._decode(self._context_ids + self._output_ids)
        rest = text[len(context_text) + self._num_emitted_chars :]
        self._num_emitted_chars += len(rest)
        return rest

    def _context(self, prompt_token_ids: Sequence[int]) -> list[int]:
        """The longest short prompt suffix that decodes to whole characters.

        A prompt ending mid-character gets no context: the output's first bytes must not merge with it,
        or the output text would no longer be the decode of the output tokens.
        """
        for start in range(max(0, len(prompt_token_ids) - _MAX_CONTEXT_TOKENS), len(prompt_token_ids)):
            suffix = list(prompt_token_ids[start:])
            if _REPLACEMENT_CHARACTER not in self._decode(suffix):
                return suffix
        return []

    def _decode(self, token_ids: list[int]) -> str:
        return self._backend.decode(token_ids, skip_special_tokens=self._skip_special_tokens)


def decode_token(tokenizer: PreTrainedTokenizerFast, token_id: int) -> str:
    """One token's own text, for logprobs (a token holding part of a character decodes to U+FFFD)."""
    return tokenizer.backend_tokenizer.decode([token_id], skip_special_tokens=False)
