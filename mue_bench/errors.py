"""Errors meant for the user: the CLI prints their message on one line and exits non-zero.

Library code raises these instead of letting a traceback reach the terminal; anything else is a bug.
"""


class MueBenchError(Exception):
    """A problem the user can fix at run time; exit code 1."""

    exit_code = 1


class SpecError(MueBenchError):
    """Bad input: a spec field, an option, a dataset file or image. Exit code 2, like any usage error."""

    exit_code = 2
