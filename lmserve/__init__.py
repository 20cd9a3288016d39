"""lmserve: an LLM serving engine with a paged KV cache, continuous batching and prefix caching."""

from lmserve.entrypoints.llm import LLM
from lmserve.errors import LmserveError
from lmserve.outputs import CompletionOutput, RequestOutput
from lmserve.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "LmserveError", "RequestOutput", "SamplingParams"]
