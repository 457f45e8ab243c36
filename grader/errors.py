"""The grader's exceptions, in one place.

Each one's message is written for whoever reads it: the instructor for a usage or cluster error, the
student for an invalid notebook.
"""

from __future__ import annotations


class UsageError(Exception):
    """A wrong option, environment variable, folder or command line: reported in a few lines before
    anything runs (pytest's usage status 4; status 2 for ``python -m grader`` and the other commands)."""


class RubricError(ValueError):
    """The rubric file is wrong; the message names the file and the entry."""


class InvalidNotebook(ValueError):
    """The file is not a notebook the grader can run; the message is for the student."""


class SandboxUnavailable(RuntimeError):
    """The run requires the sandbox and this machine lacks part of it: nothing is executed."""


class UnsafeArchive(ValueError):
    """A zip the grader refuses to extract; the message says which member and why."""


class MetadataError(ValueError):
    """submission_metadata.yml is not YAML this reader understands; the message names the line."""


class ClusterError(RuntimeError):
    """A submission could not be executed on the cluster (refused, lost, failed there); the message says why."""


class WorkerNotReady(RuntimeError):
    """A worker could not prepare to grade (raised in the task, so Dask runs it again, up to ``RETRIES``)."""
