"""How the runner and evaluator processes are isolated from the orchestrator and the machine.

Every child gets a scrubbed environment and its own process group, killed as a whole at its
deadline. Where the machine allows, it also runs under bubblewrap (no network, loopback included; a
private PID namespace so nothing outlives the job; a read-only view of the system; a private /tmp;
the grader's repo, the reference baselines, the submissions and the other students' results hidden)
and in cgroups that cap its memory and number of processes. Where something is missing (no
bubblewrap, no cgroup access, not Linux), the protections that do work are used and the others are
reported as off: ``describe()`` says which, every run prints it once, and ``unmet()`` says how to
get each one that is missing.

The modules, by subject:

- ``protections``: what this machine supports (``probe``, ``Protections``), ``describe``, ``unmet``;
- ``cgroups``: where the cgroup hierarchy is (``CGROUP_ROOT``, from ``GRADER_CGROUP_ROOT``), this
  process's own groups and the limits they set (``container_limits``);
- ``limits``: one child's cgroups, file-size limit and priority (``Limits``);
- ``bubblewrap``: what a child may see (``Isolation``) and the command line that enforces it (``wrap``);
- ``privileges``: running children as an unprivileged user where there is no bubblewrap;
- ``environment``: a child's scrubbed environment (``runner_env``, ``PASSTHROUGH_ENV``);
- ``priority``: background CPU priority (``background_policy``, ``to_background``, ``to_foreground``);
- ``run``: starting an isolated child and reading how it ended (``IsolatedRun``, ``Outcome``).

This package holds the names other code uses. The modules read each other's settings and probes
through their module (``cgroups.CGROUP_ROOT``, ``cgroups.PROC_SELF_CGROUP``, ``protections.probe``,
``priority.background_policy``, ``bubblewrap._code_paths``): to change one (in a test), change it there.
The two settings are not repeated here, so a change made on the package fails instead of doing nothing.
"""

from __future__ import annotations

from grader.runner.sandbox.bubblewrap import EVALUATOR_UID, RUNNER_UID, SCRATCH_BYTES, Isolation, wrap
from grader.runner.sandbox.cgroups import (
    CGROUP_PARENT,
    CGROUP_V1,
    ContainerLimits,
    container_limits,
    hierarchy,
    own_cgroup,
    own_cgroups,
    v1_group,
)
from grader.runner.sandbox.environment import PASSTHROUGH_ENV, runner_env
from grader.runner.sandbox.limits import DEFAULT_MEMORY_LIMIT, DEFAULT_PIDS_LIMIT, MAX_FILE_BYTES, Limits
from grader.runner.sandbox.priority import BACKGROUND_NICE, background_policy, to_background, to_foreground
from grader.runner.sandbox.privileges import drops_privileges, give_job_dir
from grader.runner.sandbox.protections import Protections, describe, probe, unmet
from grader.runner.sandbox.run import IsolatedRun, Outcome

__all__ = [
    "BACKGROUND_NICE",
    "CGROUP_PARENT",
    "CGROUP_V1",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_PIDS_LIMIT",
    "EVALUATOR_UID",
    "MAX_FILE_BYTES",
    "PASSTHROUGH_ENV",
    "RUNNER_UID",
    "SCRATCH_BYTES",
    "ContainerLimits",
    "IsolatedRun",
    "Isolation",
    "Limits",
    "Outcome",
    "Protections",
    "background_policy",
    "container_limits",
    "describe",
    "drops_privileges",
    "give_job_dir",
    "hierarchy",
    "own_cgroup",
    "own_cgroups",
    "probe",
    "runner_env",
    "to_background",
    "to_foreground",
    "unmet",
    "v1_group",
    "wrap",
]
