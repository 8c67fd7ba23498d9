"""The errors dekr raises on purpose, by what went wrong.

:class:`UserError` and its subclasses mean bad input (a recipe key, a file, a checkpoint, a flag):
the message names the offending key, file or value and what was expected, in one line; ``hint``
(optional) says what to do. The command lines print a user error as ``error: <message>`` (and
``hint: <hint>``) and exit with code 2. Any other exception is a bug in dekr: its traceback is
printed and the exit code is 1.

Each class also derives from the built-in exception that code catching dekr's errors used before
(``ValueError``, ``FileNotFoundError``, ``OSError``, ``ImportError``), so ``except ValueError``
around a recipe load keeps working.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "DekrError",
    "UserError",
    "RecipeError",
    "SpecError",
    "DataError",
    "CheckpointError",
    "DeviceError",
    "OptionError",
    "MissingFileError",
    "OutputError",
    "OutputDirError",
    "MissingDependencyError",
    "first_line",
]


class DekrError(Exception):
    """Base of every error dekr raises on purpose."""


class UserError(DekrError):
    """Bad input, not a bug: one line naming what is wrong; ``hint`` says what to do.

    The constructor takes the message as its only positional argument, so that a DataLoader
    worker can re-raise the error in the main process with its type.
    """

    def __init__(self, message: str = "", *, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.hint = hint


class RecipeError(UserError, ValueError):
    """A recipe problem, with the dotted key and what was expected."""


class SpecError(RecipeError):
    """A keypoint spec (names, sigmas, flip pairs, skeleton) that is not consistent, or an
    unknown built-in name: a recipe's ``keypoints`` or a checkpoint's."""


class DataError(UserError, ValueError):
    """Training, validation or prediction data that cannot be used (names the file / entry)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit (names the file and both models)."""


class DeviceError(UserError, ValueError):
    """Requested devices that this machine does not have (``trainer.accelerator`` / ``devices``)."""


class OptionError(UserError, ValueError):
    """A command-line option or function argument with a value outside what it accepts."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (or is of the wrong kind)."""


class OutputError(UserError, OSError):
    """An output path that cannot be written."""


class OutputDirError(OutputError, FileExistsError):
    """A run's ``output_dir`` that already holds another run (never overwritten silently)."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency a feature needs is not installed (says what to install)."""


def first_line(err: object) -> str:
    """The first non-empty line of an error's message (of ``str(err)``), or the error type's name
    when the message is empty. For an error re-raised from a DataLoader worker (``Caught X in
    DataLoader worker process N`` and the worker's traceback) it is the original error's line."""
    lines = [ln.strip() for ln in str(err).strip().strip('"').splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "worker" in lines[0]:
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(err).__name__
