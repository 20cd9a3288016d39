"""The one exception hierarchy of lmserve; the server maps these classes to HTTP status codes."""


class LmserveError(Exception):
    """Base class of every error lmserve raises on purpose."""


class InvalidRequestError(LmserveError, ValueError):
    """The caller asked for something invalid: bad sampling parameters, a prompt too long, ..."""


class ModelLoadError(LmserveError):
    """The model directory is missing, incomplete or corrupted."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model's `architectures` names no model class lmserve implements."""


class ConfigError(LmserveError, ValueError):
    """An engine option is invalid or inconsistent with the model."""


class OutOfKVCacheError(LmserveError):
    """A request can never fit in the KV cache, even alone."""


class EngineDeadError(LmserveError):
    """The engine core process is gone; no request can be served until the server restarts."""


class ServerOverloadedError(LmserveError):
    """The waiting queue is full; the client should retry later."""


class RequestTimeoutError(LmserveError):
    """A request ran past its deadline and was aborted."""


class ModelNotFoundError(InvalidRequestError):
    """The request names a model this server does not serve."""
