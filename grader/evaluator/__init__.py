"""The evaluator process and the orchestrator's side of talking to it.

``process.py`` is the evaluator process, ``python -m grader.evaluator EVAL_DIR`` (``__main__.py``): it loads each
requested saved model (Keras safe mode) and reports facts and predictions; ``inspect.py`` reads a loaded
model's layers and regularizers there. ``evaluate.py`` (``Session``: starting the evaluator process,
writing its requests, reading its answers) and ``custody.py`` (copying each saved model out of the
runner's reach before the evaluator is asked about it) run in the orchestrator. ``protocol.py`` is what
both sides share: the session's file names, the limits on a saved model, its copy and its digest.
"""
