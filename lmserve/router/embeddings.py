"""The kNN routing classifier and its text embeddings from a local Hugging Face model.

A text's embedding is the mean of the model's last hidden states over its tokens, made unit length so that a dot
product is a cosine similarity. Any local model directory works, the embedded default model included, and nothing
is downloaded. The examples are embedded once, when the classifier is built; each request costs one forward pass.
"""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoTokenizer

from lmserve.errors import ModelLoadError
from lmserve.models.default import DEFAULT_MODEL_DIR
from lmserve.router.classifier import Classifier, Decision, LabeledExample, read_request


class TextEmbedder:
    """Embeds texts as unit-length float32 vectors on the CPU, each from its first max_tokens tokens.

    A prompt's head says what kind of request it is: on the packaged examples 128, 256 and 512 tokens route alike,
    while a long prompt's forward pass costs in proportion to its length.
    """

    def __init__(self, model_dir: str | None = None, max_tokens: int = 256) -> None:
        model_dir = model_dir or DEFAULT_MODEL_DIR
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load the embedding model in {model_dir!r}: {error}") from error
        # Right padding: with left padding a causal model's positions would shift, and so would the embeddings.
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_tokens = min(max_tokens, getattr(self.model.config, "max_position_embeddings", max_tokens))

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 16) -> torch.Tensor:
        """A [len(texts), hidden_size] tensor of unit vectors."""
        vectors = [torch.empty(0, self.model.config.hidden_size)]  # so that no texts give an empty tensor
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(vectors)


def nearest_label(similarities: torch.Tensor, labels: list[str], k: int) -> tuple[str, float]:
    """The majority label of the k most similar examples and its share of their votes.

    A tie (possible with an even k) goes to the label whose voters are the more similar in total.
    """
    top = similarities.topk(min(k, len(labels)))
    totals: dict[str, tuple[int, float]] = {}
    for similarity, index in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        count, total = totals.get(labels[index], (0, 0.0))
        totals[labels[index]] = (count + 1, total + similarity)
    label = max(totals, key=lambda name: totals[name])
    return label, totals[label][0] / len(top.indices)


class KnnClassifier:
    """Labels a request like the majority of its k nearest labeled examples by cosine similarity."""

    def __init__(self, examples: list[LabeledExample], embedder: TextEmbedder, k: int, fallback: Classifier) -> None:
        self.embedder = embedder
        self.k = k
        self.fallback = fallback  # for requests with no text to embed: token ids, or an empty prompt
        self.labels = [example.label for example in examples]
        texts = [read_request(example.body).user_text for example in examples]
        # A request that repeats an example gets its label whatever its neighbours say: adding an example is how
        # an operator fixes a prompt that was routed wrong.
        self.known = dict(zip(texts, self.labels, strict=True))
        self.vectors = embedder.embed(texts)

    def classify(self, body: dict) -> Decision:
        """The majority label of the nearest examples, with its vote share as the score."""
        text = read_request(body).user_text
        if not text.strip():
            return self.fallback.classify(body)
        if text in self.known:
            return Decision(self.known[text], 1.0, ["knn_exact"])
        similarities = self.vectors @ self.embedder.embed([text])[0]
        label, share = nearest_label(similarities, self.labels, self.k)
        return Decision(label, share, ["knn"])
