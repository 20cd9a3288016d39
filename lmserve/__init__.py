"""lmserve: an LLM serving engine with a paged KV cache, continuous batching and prefix caching."""

from lmserve.errors import LmserveError
from lmserve.outputs import CompletionOutput, RequestOutput
from lmserve.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "LmserveError", "RequestOutput", "SamplingParams"]


def __getattr__(name: str):
    # `LLM` pulls in torch and the model code; import it on first use so light modules stay light.
    if name == "LLM":
        from lmserve.entrypoints.llm import LLM

        return LLM
    raise AttributeError(f"module 'lmserve' has no attribute {name!r}")
