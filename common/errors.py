"""The error for problems a user causes and can fix inside a stage (a file, a setting, a stage to
run first). main.py prints it as one line naming the stage, with exit status 2, not a traceback."""

from __future__ import annotations


class InputError(ValueError):
    """A stage cannot go on because of its input; the message names the file or setting."""
