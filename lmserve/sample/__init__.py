"""The sampler: per-step sampling metadata, token choice, and logprobs."""

from lmserve.sample.logprobs import LogprobsTensors, compute_logprobs, to_position_logprobs
from lmserve.sample.metadata import SamplingMetadata
from lmserve.sample.sampler import Sampler, SamplerOutput

__all__ = [
    "LogprobsTensors",
    "Sampler",
    "SamplerOutput",
    "SamplingMetadata",
    "compute_logprobs",
    "to_position_logprobs",
]
