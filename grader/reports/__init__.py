"""What a grading run writes for people, in the orchestrator's process: results, gradebook and
Gradescope files (``report.py``), the student's page (``student_page.py``), the class page
(``class_page.py``), what both pages share (``views.py``), their figures (``drawing.py``) and
``templates/``.
"""
