"""Boston Housing as StatLib serves it, rebuilt from the CSV shipped in ``grader/data``, and parsed and
split as the exercise notebook does."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from grader.datasets.files import PACKAGE_DATA_DIR

BOSTON_COLUMNS = (
    "CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT", "MEDV",
)  # fmt: skip

# The notebook skips exactly this many lines before the records.
STATLIB_HEADER_LINES = 22

# The description StatLib puts above the records (http://lib.stat.cmu.edu/datasets/boston).
_STATLIB_HEADER = """\
 The Boston house-price data of Harrison, D. and Rubinfeld, D.L. 'Hedonic
 prices and the demand for clean air', J. Environ. Economics & Management,
 vol.5, 81-102, 1978.   Used in Belsley, Kuh & Welsch, 'Regression diagnostics
 ...', Wiley, 1980.   N.B. Various transformations are used in the table on
 pages 244-261 of the latter.

 Variables in order:
 CRIM     per capita crime rate by town
 ZN       proportion of residential land zoned for lots over 25,000 sq.ft.
 INDUS    proportion of non-retail business acres per town
 CHAS     Charles River dummy variable (= 1 if tract bounds river; 0 otherwise)
 NOX      nitric oxides concentration (parts per 10 million)
 RM       average number of rooms per dwelling
 AGE      proportion of owner-occupied units built prior to 1940
 DIS      weighted distances to five Boston employment centres
 RAD      index of accessibility to radial highways
 TAX      full-value property-tax rate per $10,000
 PTRATIO  pupil-teacher ratio by town
 B        1000(Bk - 0.63)^2 where Bk is the proportion of blacks by town
 LSTAT    % lower status of the population
 MEDV     Median value of owner-occupied homes in $1000's

"""

# StatLib wraps each record after 11 values; B, LSTAT and MEDV go on the second line.
_STATLIB_FIRST_LINE_VALUES = 11

BOSTON_CSV = PACKAGE_DATA_DIR / "boston_house_prices.csv"


def _boston_csv_records(csv_path: Path = BOSTON_CSV) -> list[list[str]]:
    """The CSV's records as the original text tokens (header checked and dropped)."""
    with csv_path.open(newline="", encoding="ascii") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != BOSTON_COLUMNS:
        raise ValueError(f"{csv_path}: expected the header {','.join(BOSTON_COLUMNS)}")
    records = [row for row in rows[1:] if row]
    for number, row in enumerate(records, start=2):
        if len(row) != len(BOSTON_COLUMNS):
            raise ValueError(f"{csv_path}, line {number}: expected {len(BOSTON_COLUMNS)} values, found {len(row)}")
    return records


def boston_statlib_text() -> str:
    """The text ``http://lib.stat.cmu.edu/datasets/boston`` serves, built from the shipped CSV.

    22 description lines, then each record over two lines (11 values, then B, LSTAT, MEDV).
    The CSV's own number tokens are written unchanged (only padded), so the notebook's parser reads
    back exactly the floats the CSV holds: reformatting (e.g. ``18`` as ``18.00``) would put the
    equality at the mercy of the float parser.
    """
    records = _boston_csv_records()
    first = [row[:_STATLIB_FIRST_LINE_VALUES] for row in records]
    second = [row[_STATLIB_FIRST_LINE_VALUES:] for row in records]

    def widths(lines: list[list[str]]) -> list[int]:
        return [max(len(tok) for tok in column) for column in zip(*lines)]

    w1, w2 = widths(first), widths(second)
    out = io.StringIO()
    out.write(_STATLIB_HEADER)
    for a, b in zip(first, second):
        # Leading space and right-aligned columns, as in the StatLib file.
        out.write(" " + "  ".join(tok.rjust(w) for tok, w in zip(a, w1)) + "\n")
        out.write(" " + "  ".join(tok.rjust(w) for tok, w in zip(b, w2)) + "\n")
    return out.getvalue()


def parse_boston_statlib(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse StatLib's Boston layout exactly as the exercise notebook does; returns ``(X, y)``."""
    import pandas as pd  # imported here: the grading run should not pay for it before its notebooks start

    raw = pd.read_csv(io.StringIO(text), sep=r"\s+", skiprows=STATLIB_HEADER_LINES, header=None)
    X = np.hstack([raw.values[::2, :], raw.values[1::2, :2]])
    y = raw.values[1::2, 2]
    return X.astype(np.float64, copy=False), y.astype(np.float64, copy=False)


def load_boston() -> tuple[np.ndarray, np.ndarray]:
    """Boston Housing as the student's code sees it: X (506, 13) float64, y = MEDV (506,) float64.

    Goes through the StatLib text and the notebook's parser on purpose, so that the grader's
    canonical data cannot drift from what a student's kernel computes.
    """
    return parse_boston_statlib(boston_statlib_text())


def boston_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``X_train, X_test, y_train, y_test`` split as the notebook does (test_size=0.3, random_state=42)."""
    X, y = load_boston()
    from sklearn.model_selection import train_test_split

    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=42)
    return np.asarray(X_train), np.asarray(X_test), np.asarray(y_train), np.asarray(y_test)
