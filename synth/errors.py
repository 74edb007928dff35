"""Errors a user can act on: each says where the problem is and what was expected.

The CLI prints these in one line and exits 2; anything else is a bug and keeps its traceback.
"""


class SynthError(Exception):
    """Base for every error caused by input or environment rather than by a bug."""


class SpecError(SynthError):
    """A pipeline spec (or a file it names) is missing, malformed or invalid."""


class OutputExistsError(SynthError):
    """The output folder holds a finished dataset, or an unfinished run of another spec."""


class LLMError(SynthError):
    """An LLM backend failed in a way retries could not fix."""


class BugError(Exception):
    """A failure that is not the input's fault; its one line names the file with the traceback.

    The CLI prints it and exits 1; Airflow retries the task."""
