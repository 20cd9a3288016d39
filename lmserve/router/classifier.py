"""Model routing's classifier: is a `"model": "auto"` request simple enough for the small model?

The default is a heuristic over the request's own text and parameters: no model, microseconds, and every decision
names the features behind it. `kind="knn"` instead votes among the labeled examples nearest in embedding space
(lmserve/router/embeddings.py). Both read one labeled file format, a request body per line plus its "label", so
the packaged examples are the kNN's neighbours and the heuristic's accuracy check at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lmserve.errors import ConfigError

LABELS = ("simple", "complex")
PACKAGED_EXAMPLES = str(Path(__file__).resolve().parent / "examples" / "routing_examples.jsonl")


@dataclass
class ClassifierConfig:
    """Which classifier routes `"model": "auto"` requests; the heuristic's thresholds (scores are in WEIGHTS)."""

    kind: str = "heuristic"  # "heuristic" or "knn"
    examples: str | None = None  # labeled JSONL for knn; None: the packaged routing_examples.jsonl
    embedding_model: str | None = None  # local Hugging Face model directory for knn; None: the embedded default
    k: int = 5
    threshold: float = 1.0  # the heuristic answers "complex" once its score reaches this
    medium_prompt_words: int = 60
    long_prompt_words: int = 200
    large_max_tokens: int = 1024
    small_max_tokens: int = 64
    deep_conversation_turns: int = 4  # user turns
    long_system_prompt_words: int = 200

    def __post_init__(self) -> None:
        if self.kind not in ("heuristic", "knn"):
            raise ConfigError(f"classifier kind must be 'heuristic' or 'knn', got {self.kind!r}")
        if self.k < 1:
            raise ConfigError(f"classifier k must be at least 1, got {self.k}")
        if not 0 < self.medium_prompt_words < self.long_prompt_words:
            raise ConfigError(
                f"need 0 < medium_prompt_words < long_prompt_words, got {self.medium_prompt_words} and "
                f"{self.long_prompt_words}"
            )


@dataclass
class Decision:
    """A routing label with its evidence.

    score's scale depends on the classifier: the heuristic's weighted feature sum (compared with its threshold),
    or the share of the k nearest examples that voted for the label. reasons are short, fixed strings ("code",
    "long_prompt", "knn", "knn_exact") fit for logs and metric labels.
    """

    label: str  # "simple" or "complex"
    score: float
    reasons: list[str] = field(default_factory=list)


class Classifier(Protocol):
    """Anything that labels an OpenAI request body (completions or chat) as simple or complex."""

    def classify(self, body: dict) -> Decision: ...


@dataclass
class RequestText:
    """What the classifiers read of a request body, whichever endpoint it came from."""

    user_text: str = ""  # every user message, or the completions prompt
    system_text: str = ""
    user_turns: int = 0
    token_ids: int = 0  # prompt tokens sent as ids: no text to read, but they still count towards length
    max_tokens: int | None = None


def read_request(body: Any) -> RequestText:
    """Pull the text and parameters out of a chat or completions body; anything malformed counts as absent.

    The router calls this before validation, so it must never raise whatever the client sent.
    """
    request = RequestText()
    if not isinstance(body, dict):
        return request
    user_texts, system_texts = [], []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        if message.get("role") in ("system", "developer"):
            system_texts.append(_content_text(message.get("content")))
        elif message.get("role") == "user":
            user_texts.append(_content_text(message.get("content")))
            request.user_turns += 1
    prompt_texts, request.token_ids = _prompt_pieces(body.get("prompt"))
    if prompt_texts or request.token_ids:
        user_texts += prompt_texts
        request.user_turns += 1
    request.user_text = "\n".join(user_texts)
    request.system_text = "\n".join(system_texts)
    max_tokens = body.get("max_completion_tokens")  # the chat API's newer name for max_tokens
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        request.max_tokens = max_tokens
    return request


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts (images and audio are skipped)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [part if isinstance(part, str) else part.get("text") for part in content if isinstance(part, str | dict)]
    return "\n".join(text for text in texts if isinstance(text, str))


def _prompt_pieces(prompt: Any) -> tuple[list[str], int]:
    """A completions prompt (a string, a list of strings, token ids, or a list of token-id lists) as texts + ids."""
    if isinstance(prompt, str):
        return [prompt], 0
    if not isinstance(prompt, list) or not prompt:
        return [], 0
    # The API allows no mixed lists, so the first item says which kind this is, and counting ids costs nothing.
    if isinstance(prompt[0], str):
        return [item for item in prompt if isinstance(item, str)], 0
    if isinstance(prompt[0], int):
        return [], len(prompt)
    return [], sum(len(item) for item in prompt if isinstance(item, list))


# Each feature that fires adds its weight to the score; "complex" once the score reaches the threshold (1.0).
# A strong sign of a hard task (code, math, an explicit request for reasoning, a long document) decides alone;
# a weak sign (a medium-length prompt, a long answer asked for, a deep conversation, ...) needs a second one.
# The two negative weights let a client who asks for a one-word answer keep a "why" question on the small model.
WEIGHTS = {
    "code": 1.0,
    "math": 1.0,
    "reasoning": 1.0,
    "long_prompt": 1.0,
    "medium_prompt": 0.5,
    "arithmetic": 0.5,
    "multi_part": 0.5,
    "large_max_tokens": 0.5,
    "deep_conversation": 0.5,
    "long_system_prompt": 0.5,
    "short_answer": -0.5,
    "small_max_tokens": -0.5,
}

# Case matters to code syntax, so _CODE_SYNTAX reads the text as sent; every other pattern reads it lowercased,
# several times faster than an (?i) pattern. Most patterns start with a literal, which re finds by a fast search;
# a leading \b or character class would make it try every position (word boundaries go after the literal instead).
_CODE_SYNTAX = tuple(
    re.compile(pattern, re.MULTILINE)
    for pattern in (
        r"```",  # a fenced block
        r"^[ \t]*(#include\b|import\s+[\w.]+|from\s+[\w.]+\s+import\b|def\s+\w+\s*\(|class\s+\w+\s*[:(])",
        r"function(\s+\w+)?\s*\(",
        r"SELECT\b[^;]{1,300}?\bFROM\b",
        r"\{[^{}\n]*;[^{}]*\}",  # a C-like block
        r"=>|==|!=|&&",
        r"\.[A-Za-z_]\w*\(",  # a method call
        r"Traceback \(most recent call last\)|Error\b(?<=[a-z]Error)|Exception\b(?<=[a-z]Exception)",  # KeyError
        r"O\([^)]{1,12}\)",  # big-O
    )
)
# A programming task: a verb, then within the sentence something only programmers write.
_CODE_TASK = re.compile(
    r"\b(write|implement|build|create|debug|fix|refactor|optimi[sz]e)\b[^.?!\n]{0,100}?\b(function|method|class"
    r"|program|script|code|query|bug|algorithm|api|endpoint|regex|unit tests?|python|java|javascript|typescript"
    r"|rust|golang|c\+\+|c#|kotlin|swift|ruby|haskell|sql|bash|numpy)\b"
)
_MATH = tuple(
    re.compile(pattern)
    for pattern in (
        r"\\(frac|int|sum|sqrt|prod|lim|begin|mathbb|cdot|infty|partial)\b|\$[^$\n]*[\\^_=][^$\n]*\$",  # LaTeX
        r"\^\s*\d",  # x^2
        r"\([a-z]\)\s*=",  # f(x) =
        r"\d[a-z]\s*[-+=]",  # 3x + 1
        r"\b(prove|proof|theorem|lemma|integral|integrate|derivative|differentiate|eigen\w*|matri(x|ces)"
        r"|polynomial|equation|inequality|probability|expected (number|value)|converge\w*|combinatorics|logarithm"
        r"|solve for|induction)\b",
    )
)
# A word problem: several numbers and a question about a quantity.
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_QUANTITY_QUESTION = re.compile(
    r"\b(how (many|much|long|far|fast)|what time|at what|when will|what is the (total|average|rate))\b"
)
_ARITHMETIC = re.compile(r"\d\s*[-+*/×÷^]\s*\d")
_REASONING = re.compile(
    r"\b(step[- ]by[- ]step|show (each|every|your) step|explain (why|how|your reasoning)|walk (me )?through"
    r"|compare|comparison|contrast|analy[sz]e|analysis|design (a|an|the)|architect\w*|trade-?offs?|pros and cons"
    r"|evaluate|justify|critique|in detail|detailed|in depth|derive|root cause|implications|strateg(y|ies)"
    r"|plan (a|an|the|out)|what would happen|counterarguments?|hypothes[ie]s"
    r"|how (would|should|do) (you|i|we) (approach|design|test|structure|debug|scale|solve|architect))\b"
)
_SHORT_ANSWER = re.compile(
    r"\b(in one (word|sentence|line)|one-(word|line)|yes or no|briefly|in a few words|just the (answer|name))\b"
)
_LIST_ITEM = re.compile(r"^\s*(\d+[.)]|[-*•])\s+\S", re.MULTILINE)
# Markers are searched in a long text's head and tail only, so a 1 MB prompt costs what a 4 kB one does; a text
# that long is long_prompt, which decides alone, so the markers only add reasons to it.
_SCAN_CHARS = 2_000


class HeuristicClassifier:
    """Scores a request by weighted features of its text and parameters (WEIGHTS); fast and explainable."""

    def __init__(self, config: ClassifierConfig) -> None:
        self.config = config

    def classify(self, body: dict) -> Decision:
        """The label, the score behind it and the features that fired."""
        reasons = self.features(read_request(body))
        score = sum((WEIGHTS[reason] for reason in reasons), 0.0)
        return Decision("complex" if score >= self.config.threshold else "simple", score, reasons)

    def features(self, request: RequestText) -> list[str]:
        """The names of the features that fire for this request, in WEIGHTS order."""
        config = self.config
        text = request.user_text
        if len(text) > 2 * _SCAN_CHARS:
            text = text[:_SCAN_CHARS] + "\n" + text[-_SCAN_CHARS:]
        words = _count_words(request.user_text, config.long_prompt_words) + request.token_ids * 3 // 4
        lower = text.lower()
        fired = {
            "code": any(pattern.search(text) for pattern in _CODE_SYNTAX) or _CODE_TASK.search(lower) is not None,
            "math": any(pattern.search(lower) for pattern in _MATH)
            or (len(_NUMBER.findall(text)) >= 3 and _QUANTITY_QUESTION.search(lower) is not None),
            "reasoning": _REASONING.search(lower) is not None,
            "long_prompt": words >= config.long_prompt_words,
            "medium_prompt": config.medium_prompt_words <= words < config.long_prompt_words,
            "arithmetic": _ARITHMETIC.search(text) is not None,
            "multi_part": text.count("?") >= 2 or len(_LIST_ITEM.findall(text)) >= 3,
            "large_max_tokens": request.max_tokens is not None and request.max_tokens >= config.large_max_tokens,
            "deep_conversation": request.user_turns >= config.deep_conversation_turns,
            "long_system_prompt": _count_words(request.system_text, config.long_system_prompt_words)
            >= config.long_system_prompt_words,
            "short_answer": _SHORT_ANSWER.search(lower) is not None,
            "small_max_tokens": request.max_tokens is not None and request.max_tokens <= config.small_max_tokens,
        }
        if fired["math"]:
            fired["arithmetic"] = False  # the operators are part of the math already counted
        return [name for name in WEIGHTS if fired[name]]


def _count_words(text: str, limit: int) -> int:
    """Words in text, counted up to limit only: a threshold needs no more, and a huge prompt stays cheap."""
    return len(text.split(maxsplit=limit))


@dataclass
class LabeledExample:
    """One line of a labeled examples file: a request body (chat or completions) and its label."""

    body: dict
    label: str


def load_examples(path: str | None = None) -> list[LabeledExample]:
    """Read a labeled JSONL file (default: the packaged set); a malformed line is a ConfigError naming it."""
    path = path or PACKAGED_EXAMPLES
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read the routing examples {path!r}: {error}") from error
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{number}: not JSON: {error}") from error
        if not isinstance(record, dict) or record.get("label") not in LABELS:
            raise ConfigError(f"{path}:{number}: needs a 'label' of {' or '.join(LABELS)}")
        body = {key: value for key, value in record.items() if key != "label"}
        if not read_request(body).user_text.strip():
            raise ConfigError(f"{path}:{number}: needs a text 'prompt' or user 'messages'")
        examples.append(LabeledExample(body, record["label"]))
    if not examples:
        raise ConfigError(f"the routing examples {path!r} hold no example")
    return examples


def build_classifier(config: ClassifierConfig) -> Classifier:
    """The classifier config.kind names; a kNN one loads its model and embeds its examples here, once."""
    heuristic = HeuristicClassifier(config)
    if config.kind == "heuristic":
        return heuristic
    # Imported only here: the embedding model needs torch and transformers, which the router otherwise does without.
    from lmserve.router.embeddings import KnnClassifier, TextEmbedder

    return KnnClassifier(load_examples(config.examples), TextEmbedder(config.embedding_model), config.k, heuristic)
