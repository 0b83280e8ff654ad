"""The error contract: every problem the user can fix is one line naming the file and field, and the fix where
there is one; no traceback; nothing half-written.

- exit 2, `SpecError`: bad input — a spec, a CLI value, a dataset file or image, a checkpoint, a results file,
  an output folder, a device the machine lacks. Raised before any model work wherever it can be known then.
- exit 1, `MueBenchError`: a run-time failure of the work (a grid point that fails, another sweep writing the
  same results, a quality gate that fails, a full disk).
- exit 130: interrupted (Ctrl-C); finished points are saved and a rerun resumes.
The commands map these to exit codes in cli/options.py; anything else reaching the user is a bug.
"""


class MueBenchError(Exception):
    """A problem the user can fix at run time; exit code 1."""

    exit_code = 1


class SpecError(MueBenchError):
    """Bad input: a spec field, an option, a dataset file or image, a checkpoint, a results file; exit code 2."""

    exit_code = 2
