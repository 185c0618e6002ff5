"""Exceptions raised by phive.

Every exception phive raises derives from :class:`PhiveError` and carries the engine's message,
plus ``param`` (the request field at fault, e.g. ``"temperature"``) and ``code`` (a stable
machine-readable code such as ``"invalid_image"``) when known. Invalid requests also derive from
:class:`ValueError`, so ``except ValueError`` keeps working for code written against other SDKs.

Hierarchy::

    PhiveError
    ├── ModelLoadError                  a checkpoint file is missing, unreadable or malformed
    │   ├── ModelNotFoundError          the model is neither a local folder nor in the Hub cache/Hub
    │   └── UnsupportedArchitectureError  config.json names an architecture phive cannot run
    ├── InvalidRequestError (ValueError)  bad parameter, message or option
    │   └── MediaError                  an image could not be fetched or decoded
    ├── EngineBusyError                 the request queue is full; retry later
    └── InternalError                   a bug or an inconsistent checkpoint
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "PhiveError",
    "ModelLoadError",
    "ModelNotFoundError",
    "UnsupportedArchitectureError",
    "InvalidRequestError",
    "MediaError",
    "EngineBusyError",
    "InternalError",
]


class PhiveError(Exception):
    """Base class of every phive exception."""

    message: str
    param: Optional[str]
    code: Optional[str]

    def __init__(self, message: str, *, param: Optional[str] = None, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def __str__(self) -> str:
        return self.message


class ModelLoadError(PhiveError):
    """The checkpoint could not be loaded (a file is missing, unreadable or malformed)."""


class ModelNotFoundError(ModelLoadError):
    """The model id is neither a local folder nor available from the Hugging Face cache or Hub."""


class UnsupportedArchitectureError(ModelLoadError):
    """The checkpoint's ``config.json`` names an architecture this build of phive cannot run."""


class InvalidRequestError(PhiveError, ValueError):
    """The request or an option is invalid or unsupported (``param`` names the field)."""


class MediaError(InvalidRequestError):
    """An image could not be fetched or decoded."""


class EngineBusyError(PhiveError):
    """The engine's request queue is full; retrying later may succeed."""


class InternalError(PhiveError):
    """A bug in phive or an inconsistent checkpoint."""
