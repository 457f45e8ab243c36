"""The evaluator process and the orchestrator's side of talking to it.

``evaluate.py`` serves requests in ``python -m grader.evaluator.evaluate EVAL_DIR``: it loads a saved
model (Keras safe mode) and reports facts and predictions; ``inspect.py`` reads a loaded model's
layers and regularizers there. ``custody.py`` runs in the orchestrator: it copies each saved model
out of the runner's reach before the evaluator is asked about it.
"""
