"""Errors that mean "the input is wrong", as opposed to a bug.

Everything a user can get wrong (a file, a flag, a prompt, a checkpoint, a record) raises a subclass of
:class:`OpenGLIPError`. The ``openglip`` CLI prints such an error as one line and exits with code 2; any other
exception is a bug and exits with code 1 (``--debug`` shows its traceback). The classes also derive from
``ValueError`` so that ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2  # the CLI's exit code for an OpenGLIPError
EXIT_BUG = 1  # the CLI's exit code for any other exception (a bug)


class OpenGLIPError(ValueError):
    """Bad input: the message says what is wrong, where, and how to fix it."""


class UsageError(OpenGLIPError):
    """A wrong flag, path or option value."""


class DataError(OpenGLIPError):
    """An annotation, caption or data file that cannot be used (the message names the file and record)."""
