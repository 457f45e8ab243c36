"""Judging, in the orchestrator's process: where the data came from (``provenance.py``, and
``matching.py``, the matches a run makes, reused only on the same inputs), the evidence of a run
(``assemble.py``: the models found, their metrics scored from the evaluator's predictions, leakage),
the rubric's checks over that evidence (``checks.py``, one list of them; ``rubric.py`` and
``rubric.toml``; ``models.py``, which model is which; ``describe.py`` and ``reported.py``, what their
messages say and read) and the Keras-3 hints their messages carry (``hints.py``). Nothing here runs student code or loads what a student produced.
"""
