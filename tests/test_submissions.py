"""Tests of grader/submissions.py: finding submissions, reading notebooks safely, preparing them."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from grader.submissions import (
    InvalidNotebook,
    Submission,
    cell_parts,
    discover,
    neutralise_magics,
    read_notebook,
    refine_parts,
    strip_execution_metadata,
)


def notebook(*cells: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def code(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source)


def markdown(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(source)


def write_nb(path: Path, nb: nbformat.NotebookNode | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb if nb is not None else notebook(code("x = 1")), path)
    return path


def compiles_in_ipython(source: str) -> None:
    """The source as IPython would run it compiles as Python (raises SyntaxError otherwise)."""
    compile(TransformerManager().transform_cell(source), "<cell>", "exec")


# ------------------------------------------------------------------------------------------------
# discover
# ------------------------------------------------------------------------------------------------


def by_key(found: list[Submission]) -> dict[str, Submission]:
    return {s.key: s for s in found}


def test_top_level_notebook_is_keyed_by_its_stem(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "alice.ipynb")

    assert discover(tmp_path) == [Submission("alice", nb)]


def test_folder_with_one_notebook_is_keyed_by_folder_name(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "bob" / "L1L2_exercise.ipynb")

    assert discover(tmp_path) == [Submission("bob", nb)]


def test_folder_with_one_nested_notebook_is_found(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "carol" / "week3" / "work" / "exercise.ipynb")

    assert discover(tmp_path) == [Submission("carol", nb)]


def test_checkpoint_copies_inside_a_folder_do_not_count_as_a_second_notebook(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "dave" / "exercise.ipynb")
    write_nb(tmp_path / "dave" / ".ipynb_checkpoints" / "exercise-checkpoint.ipynb")

    assert discover(tmp_path) == [Submission("dave", nb)]


def test_empty_folder_gives_a_submission_without_path_and_a_clear_problem(tmp_path: Path) -> None:
    (tmp_path / "erin").mkdir()
    (tmp_path / "erin" / "notes.txt").write_text("forgot the notebook")

    [sub] = discover(tmp_path)

    assert sub.key == "erin"
    assert sub.path is None
    assert "no .ipynb" in sub.problem


def test_folder_with_two_notebooks_gives_a_problem_naming_both(tmp_path: Path) -> None:
    write_nb(tmp_path / "frank" / "draft.ipynb")
    write_nb(tmp_path / "frank" / "final.ipynb")

    [sub] = discover(tmp_path)

    assert sub.key == "frank"
    assert sub.path is None
    assert "several notebooks" in sub.problem
    assert "draft.ipynb" in sub.problem and "final.ipynb" in sub.problem


def test_hidden_and_underscore_entries_are_ignored(tmp_path: Path) -> None:
    write_nb(tmp_path / ".hidden.ipynb")
    write_nb(tmp_path / "_template.ipynb")
    write_nb(tmp_path / ".ipynb_checkpoints" / "x-checkpoint.ipynb")
    write_nb(tmp_path / "__MACOSX" / "alice" / "._exercise.ipynb")
    nb = write_nb(tmp_path / "alice.ipynb")

    assert discover(tmp_path) == [Submission("alice", nb)]


def test_non_notebook_files_are_ignored_and_results_are_sorted(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hi")
    (tmp_path / "data.csv").write_text("1,2")
    zed = write_nb(tmp_path / "zed.ipynb")
    amy = write_nb(tmp_path / "amy" / "nb.ipynb")

    assert discover(tmp_path) == [Submission("amy", amy), Submission("zed", zed)]


def test_missing_folder_raises_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--submissions"):
        discover(tmp_path / "nope")


def test_file_and_folder_with_the_same_name_get_distinct_keys(tmp_path: Path) -> None:
    write_nb(tmp_path / "gina.ipynb")
    write_nb(tmp_path / "gina" / "exercise.ipynb")

    keys = sorted(s.key for s in discover(tmp_path))

    assert keys == ["gina.dir", "gina.ipynb"]


def test_empty_folder_and_notebook_with_the_same_name_get_distinct_keys(tmp_path: Path) -> None:
    write_nb(tmp_path / "hank.ipynb")
    (tmp_path / "hank").mkdir()

    keys = [s.key for s in discover(tmp_path)]

    assert len(set(keys)) == 2, keys


# ------------------------------------------------------------------------------------------------
# read_notebook
# ------------------------------------------------------------------------------------------------


def test_read_notebook_returns_a_v4_notebook(tmp_path: Path) -> None:
    path = write_nb(tmp_path / "ok.ipynb", notebook(code("x = 1"), markdown("# Title")))

    nb = read_notebook(path)

    assert nb.nbformat == 4
    assert [c.cell_type for c in nb.cells] == ["code", "markdown"]


def test_empty_file_is_rejected_asking_to_upload_again(tmp_path: Path) -> None:
    path = tmp_path / "empty.ipynb"
    path.write_bytes(b"")

    with pytest.raises(InvalidNotebook, match=r"empty \(0 bytes\).*upload"):
        read_notebook(path)


def test_truncated_json_is_rejected_with_position_and_download_hint(tmp_path: Path) -> None:
    path = write_nb(tmp_path / "cut.ipynb")
    path.write_bytes(path.read_bytes()[:-40])

    with pytest.raises(InvalidNotebook) as info:
        read_notebook(path)

    message = str(info.value)
    assert "not valid notebook JSON" in message
    assert "line" in message and "column" in message
    assert "truncated" in message and "Download" in message


def test_non_utf8_bytes_are_rejected_with_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.ipynb"
    path.write_bytes(b'{"cells": [], "note": "caf\xe9"}')

    with pytest.raises(InvalidNotebook, match=r"not UTF-8 text .* at byte 26"):
        read_notebook(path)


@pytest.mark.parametrize("payload", [[1, 2, 3], {"name": "not a notebook"}, "just a string", 42])
def test_json_that_is_not_a_notebook_is_rejected(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "data.ipynb"
    path.write_text(json.dumps(payload))

    with pytest.raises(InvalidNotebook, match="JSON but not a Jupyter notebook"):
        read_notebook(path)


def test_notebook_with_cells_that_break_the_schema_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "code"}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))

    with pytest.raises(InvalidNotebook, match="does not follow the Jupyter format"):
        read_notebook(path)


def test_nbformat_3_notebook_is_upgraded_to_v4(tmp_path: Path) -> None:
    v3 = {
        "nbformat": 3,
        "nbformat_minor": 0,
        "metadata": {"name": "old"},
        "worksheets": [
            {
                "metadata": {},
                "cells": [
                    {"cell_type": "heading", "level": 2, "metadata": {}, "source": ["Practice"]},
                    {
                        "cell_type": "code",
                        "collapsed": False,
                        "input": ["x = 1\n", "print(x)"],
                        "language": "python",
                        "metadata": {},
                        "outputs": [],
                        "prompt_number": 1,
                    },
                ],
            }
        ],
    }
    path = tmp_path / "old.ipynb"
    path.write_text(json.dumps(v3))

    nb = read_notebook(path)

    assert nb.nbformat == 4
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    assert nb.cells[0].source == "## Practice"
    assert nb.cells[1].source == "x = 1\nprint(x)"


@pytest.mark.filterwarnings("error")  # as in `pytest grader/`, which grades under the project's filterwarnings
def test_v4_5_notebook_without_cell_ids_is_read_with_ids_added(tmp_path: Path) -> None:
    cell: dict[str, object] = {
        "cell_type": "code",
        "metadata": {},
        "source": "x = 1",
        "outputs": [],
        "execution_count": None,
    }
    path = tmp_path / "no_ids.ipynb"
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))

    nb = read_notebook(path)

    assert nb.cells[0].source == "x = 1"
    assert nb.cells[0].get("id")


# ------------------------------------------------------------------------------------------------
# neutralise_magics
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["!pip install tensorflow==2.15", "%pip install keras", "!!ls -la", "%load_ext autoreload", "%timeit f()"],
)
def test_shell_escapes_and_other_line_magics_become_pass(line: str) -> None:
    nb = notebook(code(f"import os\n{line}\nx = 1"))

    replaced = neutralise_magics(nb)

    assert replaced == [line]
    lines = nb.cells[0].source.splitlines()
    assert lines[0] == "import os" and lines[2] == "x = 1"
    assert lines[1].startswith("pass  # [grader] not run while grading:")
    compiles_in_ipython(nb.cells[0].source)


def test_assigned_shell_output_becomes_an_empty_list() -> None:
    nb = notebook(code("files = !ls data\nprint(files)"))

    replaced = neutralise_magics(nb)

    assert replaced == ["files = !ls data"]
    assert nb.cells[0].source.splitlines()[0].startswith("files = []  # [grader]")
    namespace: dict[str, object] = {}
    exec(
        compile(TransformerManager().transform_cell(nb.cells[0].source), "<cell>", "exec"),
        {"print": lambda *a: None},
        namespace,
    )
    assert namespace["files"] == []


def test_indented_shell_escape_keeps_the_block_valid() -> None:
    nb = notebook(code("if True:\n    !pip install x\n    y = 2"))

    neutralise_magics(nb)

    assert nb.cells[0].source.splitlines()[1].startswith("    pass  # [grader]")
    compiles_in_ipython(nb.cells[0].source)


def test_bash_cell_magic_is_commented_out_entirely() -> None:
    nb = notebook(code("%%bash\nwget http://example.com/data.csv\nrm -rf /tmp/x"))

    replaced = neutralise_magics(nb)

    assert replaced == ["%%bash"]
    source = nb.cells[0].source
    assert "wget" in source and all(line.startswith("#") or line == "pass" for line in source.splitlines()), source
    compiles_in_ipython(source)


def test_matplotlib_inline_and_time_cell_magic_are_kept() -> None:
    original = ["%matplotlib inline\nimport numpy as np", "%%time\nmodel = 1\n%time x = 2"]
    nb = notebook(*(code(s) for s in original))

    replaced = neutralise_magics(nb)

    assert replaced == []
    assert [c.source for c in nb.cells] == original
    for cell in nb.cells:
        compiles_in_ipython(cell.source)


def test_shell_escape_inside_a_time_cell_is_still_replaced() -> None:
    nb = notebook(code("%%time\n!pip install x\nx = 1"))

    replaced = neutralise_magics(nb)

    assert replaced == ["!pip install x"]
    assert nb.cells[0].source.splitlines()[0] == "%%time"
    compiles_in_ipython(nb.cells[0].source)


def test_markdown_cells_and_plain_python_are_untouched() -> None:
    md = "Run `!pip install x` first\n%pip is also mentioned"
    py = "a = 3 % 2\nb = a != 1\nprint(f'{a}%')"
    nb = notebook(markdown(md), code(py))

    assert neutralise_magics(nb) == []
    assert [c.source for c in nb.cells] == [md, py]


def test_magics_across_cells_are_all_reported_in_order() -> None:
    nb = notebook(code("!pip install a"), code("%%bash\nls"), code("out = !pwd"))

    assert neutralise_magics(nb) == ["!pip install a", "%%bash", "out = !pwd"]
    for cell in nb.cells:
        compiles_in_ipython(cell.source)


def test_a_continuation_line_starting_with_the_modulo_operator_is_not_a_magic() -> None:
    source = 'print("Test MSE: %.2f"\n      % mse)'
    nb = notebook(code(source))

    assert neutralise_magics(nb) == []
    assert nb.cells[0].source == source


# ------------------------------------------------------------------------------------------------
# strip_execution_metadata
# ------------------------------------------------------------------------------------------------


def test_strip_execution_metadata_removes_steering_tags_and_the_kernelspec() -> None:
    cell = code("raise ValueError")
    cell.metadata["tags"] = ["raises-exception", "keep-me", "skip-execution"]
    cell.metadata["execution"] = {"iopub.execute_input": "2024-01-01"}
    other = code("x = 1")
    other.metadata["collapsed"] = True
    nb = notebook(cell, other)
    nb.metadata["kernelspec"] = {"name": "evil", "display_name": "Evil", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}

    strip_execution_metadata(nb)

    assert "kernelspec" not in nb.metadata and "language_info" not in nb.metadata
    assert nb.metadata["colab"] == {"provenance": []}
    assert nb.cells[0].metadata["tags"] == ["keep-me"]
    assert "execution" not in nb.cells[0].metadata
    assert nb.cells[1].metadata == {"collapsed": True}
    nbformat.validate(nb)


# ------------------------------------------------------------------------------------------------
# cell_parts
# ------------------------------------------------------------------------------------------------


def test_cells_above_the_practice_heading_are_recap_and_below_are_practice() -> None:
    nb = notebook(
        markdown("# L1/L2 Regularization\n\n## Recap"),
        code("import pandas as pd"),
        code("model.fit(X_train, y_train)"),
        markdown("Some words\n\n## Practice\n\nRetrain the CNN."),
        code("import tensorflow as tf"),
        code("cnn.fit(x_train, y_train)"),
    )

    assert cell_parts(nb) == ["recap", "recap", "recap", "cnn", "cnn", "cnn"]


def test_practice_heading_is_case_insensitive_and_any_level() -> None:
    nb = notebook(code("a = 1"), markdown("### PRACTICE: CNN with L1"), code("b = 2"))

    assert cell_parts(nb) == ["recap", "cnn", "cnn"]


def test_practice_in_a_code_comment_or_plain_text_is_not_the_heading() -> None:
    nb = notebook(
        code("# Practice\nraw_df = pd.read_csv(DATA_URL)"),
        markdown("Practice makes perfect, see cifar"),
        code("y = 2"),
    )

    assert cell_parts(nb) == ["recap", "cnn", "recap"]


def test_without_a_practice_heading_boston_and_cifar_mentions_decide() -> None:
    nb = notebook(
        code("data_url = 'http://lib.stat.cmu.edu/datasets/boston'"),
        code("(x_train, y_train), _ = tf.keras.datasets.cifar10.load_data()"),
        code("import numpy as np"),
        markdown("## Boston housing"),
    )

    assert cell_parts(nb) == ["recap", "cnn", "cnn", "recap"]


BOSTON_CELL = """import pandas as pd
raw_df = pd.read_csv("http://lib.stat.cmu.edu/datasets/boston", sep=r"\\s+", skiprows=22, header=None)
X = np.hstack([raw_df.values[::2, :], raw_df.values[1::2, :2]])
y = raw_df.values[1::2, 2]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=42)"""
CIFAR_CELL = "(x_train, y_train), (x_test, y_test) = tf.keras.datasets.cifar10.load_data()"


@pytest.mark.parametrize(
    ("source", "part"),
    [
        (BOSTON_CELL, "recap"),
        ("from sklearn.datasets import load_boston\nhouses = load_boston()", "recap"),
        ("prices = pd.read_csv('data/BostonHousing.csv')['medv']", "recap"),
        (CIFAR_CELL, "cnn"),
        ("images = tfds.load('cifar10', split='train')", "cnn"),
        ("net = Sequential([Conv2D(16, 3, activation='relu'), MaxPooling2D()])", "cnn"),
        ("inputs = keras.Input(shape=(32, 32, 3))", "cnn"),
        ("x = x.reshape(-1, 32, 32, 3)", "cnn"),
        ("# Load the Boston data, then the CIFAR-10 images\nprint('Boston results below')\nscore = 1", "other"),
    ],
)
def test_a_code_cell_is_placed_by_the_data_its_code_uses(source: str, part: str) -> None:
    assert cell_parts(notebook(code(source))) == [part]


def test_a_practice_heading_above_the_recap_code_does_not_make_it_practice() -> None:
    nb = notebook(
        markdown("# Practice 7: L1 and L2 regularization"),
        code("import numpy as np\nimport tensorflow as tf"),
        code(BOSTON_CELL),
        code("model.fit(X_train, y_train, epochs=5)"),
        markdown("## Practice\n\nRetrain the Task 2 model with a weight penalty."),
        code(CIFAR_CELL),
        code("cnn.fit(x_train, y_train, epochs=2)"),
    )

    assert cell_parts(nb) == ["recap", "recap", "recap", "recap", "cnn", "cnn", "cnn"]


def test_a_practice_heading_places_the_cells_whose_code_says_nothing() -> None:
    nb = notebook(
        markdown("## Recap on Regularization"),
        code(BOSTON_CELL),
        markdown("## Practice"),
        code("# Build the model\n# Use L1 regularization\n...\n\n# Train the model\n..."),
    )

    assert cell_parts(nb) == ["recap", "recap", "cnn", "cnn"]


def test_cells_without_data_follow_the_part_they_serve() -> None:
    nb = notebook(
        code("import numpy as np\nimport matplotlib.pyplot as plt"),
        code(BOSTON_CELL),
        code("def show(history):\n    plt.plot(history.history['loss'])\n    plt.show()"),
        code(CIFAR_CELL),
        code("show(cnn.fit(x_train, y_train))"),
        code("plt.show()"),
    )

    assert cell_parts(nb) == ["recap", "recap", "cnn", "cnn", "cnn", "cnn"]


def test_a_cell_that_uses_names_only_the_boston_code_defines_is_recap() -> None:
    nb = notebook(
        code(BOSTON_CELL + "\nX_train_s = scaler.fit_transform(X_train)"),
        markdown("## Practice"),
        code("def train(reg):\n    model = build(reg)\n    model.fit(X_train_s, y_train)\n    return model"),
        code("%matplotlib inline\nl1 = train('l1')"),
        code(CIFAR_CELL),
        code("print(y_train.shape)"),
    )

    assert cell_parts(nb) == ["recap", "recap", "recap", "recap", "cnn", "cnn"]


def test_notebook_without_headings_is_split_by_its_data() -> None:
    nb = notebook(
        code(CIFAR_CELL),
        code("cnn = build_cnn('l1')\ncnn.fit(x_train / 255, y_train)"),
        code(BOSTON_CELL),
        code("mse = model.evaluate(X_test, y_test)"),
    )

    assert cell_parts(nb) == ["cnn", "cnn", "recap", "recap"]


def test_parts_in_the_other_order_are_placed_by_their_code() -> None:
    nb = notebook(
        markdown("## Practice"),
        code(CIFAR_CELL),
        markdown("## Recap"),
        code(BOSTON_CELL),
        code("..."),
    )

    assert cell_parts(nb) == ["cnn", "cnn", "recap", "recap", "recap"]


def test_a_duplicated_practice_heading_holds_only_where_the_code_agrees() -> None:
    nb = notebook(
        markdown("## Practice"),
        code(BOSTON_CELL),
        code("print('recap done')"),
        markdown("## Practice"),
        code("# Build the model\n..."),
    )

    assert cell_parts(nb) == ["recap", "recap", "recap", "cnn", "cnn"]


def test_a_shared_imports_cell_at_the_top_goes_with_the_part_below_it() -> None:
    nb = notebook(
        markdown("# L1 and L2 regularization"),
        code("import numpy as np\nimport tensorflow as tf"),
        markdown("## Recap"),
        code(BOSTON_CELL),
        markdown("## Practice"),
        code(CIFAR_CELL),
    )

    assert cell_parts(nb) == ["recap", "recap", "recap", "recap", "cnn", "cnn"]


def test_a_notebook_without_data_or_part_headings_is_all_other() -> None:
    nb = notebook(markdown("# Notes"), code("x = 1"), code("print(x)"))

    assert cell_parts(nb) == ["other", "other", "other"]


# A notebook whose code shows no data: the heading alone would make the recap practice.
UNMARKED = (
    markdown("## Practice"),
    code("features, prices = load_table()\nmodel.fit(features, prices)"),
    code("print(model.evaluate(features, prices))"),
    code("net.fit(pixels, classes)"),
)


def test_a_cell_that_trained_on_boston_is_recap_whatever_its_heading() -> None:
    nb = notebook(*UNMARKED)

    assert cell_parts(nb) == ["cnn"] * 4
    assert refine_parts(nb, [(1, "boston"), (3, "cifar10")]) == ["recap", "recap", "recap", "cnn"]


def test_a_cell_that_trained_on_cifar10_is_practice_whatever_its_heading() -> None:
    nb = notebook(
        markdown("## Recap"),
        code(BOSTON_CELL),
        code("net.fit(pixels, classes)"),
        markdown("## Practice"),
        code("..."),
    )

    assert cell_parts(nb) == ["recap", "recap", "recap", "cnn", "cnn"]
    assert refine_parts(nb, [(1, "boston"), (2, "cifar10")]) == ["recap", "recap", "cnn", "cnn", "cnn"]


def test_cells_between_training_cells_follow_them() -> None:
    nb = notebook(
        code("import numpy as np"),
        code("model.fit(features, prices)"),
        code("plot(model)"),
        code("net.fit(pixels, classes)"),
        code("plot(net)"),
    )

    assert refine_parts(nb, [(1, "boston"), (3, "cifar10")]) == ["recap", "recap", "cnn", "cnn", "cnn"]


@pytest.mark.parametrize("trained", [[(0, "cifar10"), (0, "boston")], [(0, "boston"), (0, "cifar10")]])
def test_a_cell_that_trained_on_both_datasets_is_recap(trained: list[tuple[int | None, str]]) -> None:
    nb = notebook(code("fit_everything()"), markdown("## Practice"), code("..."))

    assert refine_parts(nb, trained) == ["recap", "cnn", "cnn"]


def test_fits_of_unknown_data_or_of_no_known_cell_change_nothing() -> None:
    nb = notebook(*UNMARKED)

    assert refine_parts(nb, [(None, "boston"), (1, "unknown"), (99, "cifar10"), (-1, "boston")]) == cell_parts(nb)
    assert refine_parts(nb, []) == cell_parts(nb)


def test_a_heading_without_a_space_after_the_hashes_still_counts() -> None:
    nb = notebook(code("a = 1"), markdown("#Practice"), code("b = 2"))

    assert cell_parts(nb) == ["recap", "cnn", "cnn"]


def test_code_too_deeply_nested_to_parse_is_placed_without_error() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('raw_df = pd.read_csv("http://lib.stat.cmu.edu/datasets/boston")'),
        nbformat.v4.new_code_cell("x = " + "(" * 100_000 + "1" + ")" * 100_000),
    ]

    assert cell_parts(nb) == ["recap", "recap"]


def test_a_cell_python_warns_about_still_has_its_names_read_whatever_the_warning_filters() -> None:
    import warnings

    from grader.submissions import _bound_and_read

    source = 'raw_df = pd.read_csv(url, sep="\\s+", skiprows=22, header=None)'  # "\s": an invalid escape
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under pytest's filterwarnings = error
        bound, read = _bound_and_read(source)
    assert bound == {"raw_df"} and {"pd", "url"} <= read
