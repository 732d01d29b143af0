"""User-facing errors.

Every problem caused by the user's input (a bad file, a bad flag, an existing
output) is raised as :class:`WarmstartError`. The CLI prints it as one line
naming the file and the problem and exits with code 2; a traceback is shown
only with ``--debug``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class WarmstartError(Exception):
    """An error in the user's input, reported as one line and exit code 2."""

    exit_code = 2

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class CheckpointError(WarmstartError):
    """A checkpoint directory or file that cannot be read as promised."""


class UnsupportedArchitecture(WarmstartError):
    """A model_type no architecture spec describes."""


class OutputExists(WarmstartError):
    """The output path exists and --force was not given."""


class SpecError(WarmstartError):
    """A schedule, recipe or operation spec that does not parse or validate."""


class ParamError(SpecError):
    """A bad parameter of an operation; `param` names it, so a recipe can point at `steps[i].param`."""

    def __init__(self, param: str, message: str, path: str | os.PathLike | None = None):
        self.param = param
        super().__init__(message, path)
