"""Command-line options of the grading run (``pytest grader/ --help`` lists them under "grading").

The options, their defaults and their help live in ``grader/plugin.py``; this root conftest only
loads that plugin, so the options are known whichever folder pytest is pointed at.
"""

pytest_plugins = ["grader.plugin"]
