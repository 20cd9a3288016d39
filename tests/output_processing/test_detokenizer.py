"""The streamed text joins to exactly tokenizer.decode() and never carries half a character."""

from hypothesis import given, settings
from hypothesis import strategies as st

from lmserve.output_processing.detokenizer import IncrementalDetokenizer, decode_token

_SETTINGS = settings(max_examples=1000, deadline=None)
_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("ab é中文日本😀🎉👍🏽\n")),
        st.characters(exclude_categories=["Cs"], exclude_characters="\ufffd"),
    ),
    max_size=40,
)


def _stream(detokenizer, token_ids, chunk_sizes):
    """Feed token_ids in chunks; return every piece, the flush last."""
    pieces, position = [], 0
    for size in chunk_sizes:
        pieces.append(detokenizer.add_tokens(token_ids[position : position + size]))
        position += size
    pieces.append(detokenizer.add_tokens(token_ids[position:]))
    pieces.append(detokenizer.flush())
    return pieces


@_SETTINGS
@given(data=st.data(), skip_special_tokens=st.booleans())
def test_random_token_ids_join_to_decode(tokenizer, data, skip_special_tokens):
    vocab = st.integers(0, len(tokenizer) - 1)
    prompt = data.draw(st.lists(vocab, max_size=6))
    output = data.draw(st.lists(vocab, max_size=25))
    chunk_sizes = data.draw(st.lists(st.integers(1, 4), max_size=10))
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens)

    pieces = _stream(detokenizer, output, chunk_sizes)

    assert "".join(pieces) == tokenizer.decode(output, skip_special_tokens=skip_special_tokens)


@_SETTINGS
@given(prompt_text=_TEXT, text=_TEXT)
def test_text_streams_token_by_token_without_broken_characters(tokenizer, prompt_text, text):
    output = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer.encode(prompt_text), skip_special_tokens=True)

    pieces = [detokenizer.add_tokens([token_id]) for token_id in output] + [detokenizer.flush()]

    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text == tokenizer.decode(output)


def test_multi_byte_character_is_held_until_complete(tokenizer):
    for character in ["😀", "中", "é", "🎉"]:
        token_ids = tokenizer.encode(character)
        assert len(token_ids) > 1, f"{character!r} should span tokens in the tiny tokenizer"
        detokenizer = IncrementalDetokenizer(tokenizer, tokenizer.encode("Hi "), skip_special_tokens=True)

        pieces = [detokenizer.add_tokens([token_id]) for token_id in token_ids]

        assert pieces[:-1] == [""] * (len(token_ids) - 1)
        assert pieces[-1] == character


def test_flush_renders_a_cut_character_as_decode_does(tokenizer):
    token_ids = tokenizer.encode("ok 😀")[:-1]
    detokenizer = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True)

    streamed = detokenizer.add_tokens(token_ids)
    rest = detokenizer.flush()

    assert streamed == "ok"
    assert rest.startswith(" \ufffd")
    assert streamed + rest == tokenizer.decode(token_ids)
    assert detokenizer.flush() == ""


def test_prompt_ending_mid_character_does_not_leak_into_output(tokenizer):
    character_ids = tokenizer.encode("中")
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer.encode("x") + character_ids[:1], True)

    text = detokenizer.add_tokens(character_ids[1:] + tokenizer.encode("ab")) + detokenizer.flush()

    assert text == tokenizer.decode(character_ids[1:] + tokenizer.encode("ab"))
    assert text.endswith("ab") and "x" not in text


def test_special_tokens_are_skipped_or_kept(tokenizer):
    token_ids = tokenizer.encode("Hi<|im_end|>") + [tokenizer.eos_token_id]
    for skip, expected in [(True, "Hi"), (False, "Hi<|im_end|><|im_end|>")]:
        detokenizer = IncrementalDetokenizer(tokenizer, [tokenizer.bos_token_id], skip)
        assert detokenizer.add_tokens(token_ids) + detokenizer.flush() == expected


def test_decode_token(tokenizer):
    assert decode_token(tokenizer, tokenizer.encode("ll")[0]) == "ll"
    assert decode_token(tokenizer, tokenizer.eos_token_id) == "<|im_end|>"
    assert decode_token(tokenizer, tokenizer.encode("😀")[0]) == "\ufffd"
