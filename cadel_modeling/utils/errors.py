"""cadel's own error types for what the user has to fix: the commands turn these (and only these) into one line
and exit 2. Any other exception is a bug in cadel or a library below it: exit 1, the traceback kept in the log.

Each type also derives from the builtin it refines (``ValueError``, ``FileNotFoundError``, ...), so callers that
catch the builtin keep working.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input (flags, config, data, model, checkpoint, output folder): one line says what to fix."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration problem the user has to fix (unknown key, wrong type, missing preset, bad YAML)."""


class DataError(UserError, ValueError):
    """The dataset cannot be used as asked (missing files, empty or unreadable split, labels, class counts)."""


class ModelError(UserError, ValueError):
    """A model folder, Hub id or weights file that cannot be read or does not fit the data."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder named by the user (or needed next to it) does not exist."""


class OutputDirError(UserError, FileExistsError):
    """An output folder cadel must not write into (another run's, someone's files, or busy)."""


class DiskFullError(UserError, OSError):
    """No space left where the run writes; nothing half-written is kept in place of a whole file."""
