"""The runner process and how the orchestrator starts and isolates it.

``process.py`` is the runner process, ``python -m grader.runner JOB_DIR`` (``__main__.py``): it runs nbclient and a
fresh kernel over the prepared notebook. The other modules run in the orchestrator: ``execute.py``
lays out a job dir, starts the runner process and reads how it ended; ``sandbox/`` isolates every
child of the orchestrator (bubblewrap, cgroups, limits); ``gpu.py`` says which GPU a job may use. The
runner process reads two constants of theirs (``sandbox.PASSTHROUGH_ENV``, ``gpu.GROWTH_ENV``).
"""
