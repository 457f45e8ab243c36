"""Judging, in the orchestrator's process: where the data came from (``provenance.py``), the
rubric's checks over the evidence (``checks.py``, ``rubric.toml``) and the Keras-3 hints their
messages carry (``hints.py``). Nothing here runs student code or loads what a student produced.
"""
