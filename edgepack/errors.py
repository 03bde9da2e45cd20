"""The one error hierarchy of edgepack.

Every failure a user can cause or meet is one of these. Each carries the process exit code the CLI
returns, and a message that says what was found, what is allowed and what to do next. The CLI
prints the message on one line (no traceback unless --debug)."""
from __future__ import annotations


class EdgepackError(Exception):
    """Base class. `exit_code` is what `edgepack` exits with."""

    exit_code = 1


class UsageError(EdgepackError):
    """Bad flags or bad input files (missing, corrupt, wrong shape): exit code 2."""

    exit_code = 2


class LoadError(UsageError):
    """The model file cannot be loaded as given."""


class PickleNotAllowed(LoadError):
    """A pickled module was found and --allow-pickle was not passed."""


class InputShapeError(UsageError):
    """The input shape given (or inferred) does not fit the model."""


class ConversionError(EdgepackError):
    """The model could not be converted (e.g. PyTorch -> ONNX failed in both exporters): exit 4."""

    exit_code = 4


class UnsupportedError(EdgepackError):
    """An op, format or precision that edgepack does not support (yet): exit code 4."""

    exit_code = 4


class VerificationFailed(EdgepackError):
    """An artifact differs from the reference by more than its tolerance: exit code 3."""

    exit_code = 3


class RemoteError(UsageError):
    """A board cannot be reached over SSH, refuses the key, or has an unknown host key."""


class OutputError(UsageError):
    """The output location cannot be written."""




def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first non-empty line (or its type name), cut to `limit` characters: the part of
    a library's message that fits in edgepack's one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."
