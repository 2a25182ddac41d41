"""How the `frostline` command reports what stopped it: one line on stderr and an exit
code per kind of trouble (the table is in docs/cli.md)."""

from __future__ import annotations

import errno
import os

from frostline.errors import (
    BackendUnavailable, CheckpointError, FrostlineError, FrostlineTypeError, FrostlineValueError, StorageError, shorten,
)

__all__ = [
    "EXIT_BACKEND", "EXIT_BROKEN_PIPE", "EXIT_CHECKPOINT", "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_STORAGE",
    "CommandError", "describe", "one_line", "resume_hint", "storage_message",
]

EXIT_INTERNAL = 1  # an unexpected error: a bug to report, with the traceback from --debug
EXIT_INPUT = 2  # usage, a model, plan, config or data file that cannot be used (argparse's own code)
EXIT_CHECKPOINT = 3  # --resume: no checkpoint, a damaged one, or one of another configuration
EXIT_STORAGE = 4  # the operating system refused a read or write: a full disk, no permission
EXIT_BACKEND = 5  # KERAS_BACKEND names no backend, or one that is not installed or cannot start
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)
EXIT_BROKEN_PIPE = 141  # stdout closed by its reader, as in `frostline inspect ... | head` (128 + SIGPIPE)

_FULL = (errno.ENOSPC, errno.EDQUOT)


class CommandError(Exception):
    """An error reported as one line on stderr (`frostline CMD: error: ...`) with an exit
    code, `EXIT_INPUT` unless told."""

    def __init__(self, message: str, code: int = EXIT_INPUT):
        super().__init__(message)
        self.code = code


def one_line(text: str) -> str:
    """`text` with every run of whitespace, newlines included, made one space."""
    return " ".join(text.split())


def storage_message(error: OSError, folder: str | None = None) -> str:
    """What an operating-system error on a file means, and what to do about it. For a
    frostline `StorageError` the raw error it came from names the file; where none does,
    `folder` (the one being written to) is named."""
    raw = error.__cause__ if isinstance(error.__cause__, OSError) else error
    code = raw.errno if raw.errno is not None else error.errno
    reason = os.strerror(code) if code else (raw.strerror or str(raw))
    where = f" {raw.filename}" if raw.filename else f" in {folder}" if folder else ""
    if code == errno.EFBIG:
        advice = "Raise the file-size limit (ulimit -f), or write to another disk."
    elif code in _FULL:
        advice = "Free some space, or write to another disk."
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "Write to a folder this user can write to."
    else:
        advice = ""
    verb = "could not write" if isinstance(error, StorageError) else "could not read or write"
    return one_line(f"{verb}{where}: {reason}. {advice}")


def describe(error: Exception) -> CommandError:
    """The one line and exit code for an error that stopped a command."""
    if isinstance(error, CommandError):
        return error
    if isinstance(error, BackendUnavailable):
        return CommandError(str(error), EXIT_BACKEND)
    if isinstance(error, CheckpointError):
        return CommandError(str(error), EXIT_CHECKPOINT)
    if isinstance(error, FileNotFoundError):  # fl.MissingFileError too: an input that is not there
        return CommandError(str(error) if isinstance(error, FrostlineError) else
                            f"file not found: {error.filename or error}", EXIT_INPUT)
    if isinstance(error, OSError):  # fl.StorageError too
        return CommandError(storage_message(error), EXIT_STORAGE)
    if isinstance(error, (FrostlineValueError, FrostlineTypeError)):
        return CommandError(str(error), EXIT_INPUT)
    reason = shorten(one_line(str(error)), 300, quote=False)
    what = reason if isinstance(error, FrostlineError) else f"unexpected {type(error).__name__}" + (
        f": {reason}" if reason else "")
    return CommandError(f"{what} (run with --debug for the traceback)", EXIT_INTERNAL)


def resume_hint(checkpoints: str) -> str:
    """Where a stopped run can go on from: the epoch its last checkpoint was written after."""
    from frostline.train.checkpoint import read_latest

    try:
        _, state = read_latest(checkpoints)
    except (CheckpointError, OSError):
        return "before its first epoch ended; nothing to resume, run it again"
    return f"after epoch {state['epoch_done']}; continue with --resume"
