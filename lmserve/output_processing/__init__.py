"""Output processing: token ids back to text, stop strings, and one RequestOutput per request."""

from lmserve.output_processing.output_processor import OutputProcessor, ProcessedOutputs

__all__ = ["OutputProcessor", "ProcessedOutputs"]
