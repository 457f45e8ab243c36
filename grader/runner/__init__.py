"""The runner process and how it is isolated.

``execute.py``: the orchestrator lays out a job and starts ``python -m grader.runner.execute JOB``,
which runs nbclient and a fresh kernel over the prepared notebook. ``sandbox.py``: how every child
of the orchestrator is isolated (bubblewrap, cgroups, limits). ``gpu.py``: which GPU a job may use.
"""
