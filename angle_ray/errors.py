"""The base class of every error a user can fix: bad config, bad data, a missing model or file.

The command line turns a `UserError` into one `error: ...` line and exit code 2 (no traceback;
`--debug` shows it). Each layer subclasses it where its errors are raised (`ConfigError`,
`DataError`, `ModelLoadError`, `TaskError`, `SpaceError`), so this module imports nothing.
"""


class UserError(ValueError):
    """An error in what the user gave (a file, a row, a key, a path); the message says where."""
