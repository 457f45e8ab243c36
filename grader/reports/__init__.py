"""What a grading run writes for people, in the orchestrator's process: results, gradebook and
Gradescope files (``report.py``), feedback pages and their figures (``feedback.py``, ``templates/``).
"""
