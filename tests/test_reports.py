"""The reports' exact text (results table, per-class CSV, length errors) and the per-class plot's content: what is
drawn where, read back from the matplotlib Figure's artists. The plot's styling (colours, alpha, line widths, font
sizes, alignment, legend frame: ``PLOT_STYLE``) is not pinned: docs/testing.md lists it as excluded from mutation."""
import math

import pytest
from matplotlib.figure import Figure

from cadel_modeling.metrics import format_table, plot_per_class_accuracy, write_per_class_csv


def test_the_table_is_aligned_right_with_dashes_for_missing_values_and_says_its_units():
    results = {"a": {"accuracy": 0.5, "nll": 1.25, "ece": float("nan")},
               "long name": {"accuracy": 1.0, "few_accuracy": 0.123, "macro_f1": None}}
    assert format_table(results).splitlines() == [
        "             All  Many  Medium   Few  Top-5  ECE    NLL  macro-F1",
        "a           50.0     -       -     -      -    -  1.250         -",
        "long name  100.0     -       -  12.3      -    -      -         -",
        "(% except NLL, in nats)"]


def test_the_csv_text_is_exact(tmp_path):
    path = write_per_class_csv(tmp_path / "c.csv", [1.0, None, 1 / 3, 0.0], [500, 100, 20, 3],
                               ["cat", "dog, large", "owl", "eel"])
    assert path == tmp_path / "c.csv"
    assert path.read_bytes() == (b"class_id,class_name,train_count,shot,accuracy\r\n"
                                 b"0,cat,500,many,1.0\r\n"
                                 b"1,\"dog, large\",100,medium,\r\n"
                                 b"2,owl,20,medium,0.3333333333333333\r\n"
                                 b"3,eel,3,few,0.0\r\n")


def test_the_csv_names_classes_by_id_without_names_and_uses_the_given_thresholds(tmp_path):
    path = write_per_class_csv(tmp_path / "c.csv", [0.5, 0.25, 0.0], [60, 6, 4], many_threshold=50, few_threshold=5)
    assert path.read_text().splitlines() == ["class_id,class_name,train_count,shot,accuracy", "0,0,60,many,0.5",
                                             "1,1,6,medium,0.25", "2,2,4,few,0.0"]


def test_inputs_of_different_lengths_are_refused_with_every_length(tmp_path):
    with pytest.raises(ValueError) as error:
        write_per_class_csv(tmp_path / "c.csv", [0.5, 0.5], [3, 2, 1], ["a", "b"])
    assert str(error.value) == ("need one entry per class in each input, got lengths "
                                "{'per_class_accuracy': 2, 'class_counts': 3, 'class_names': 2}")
    with pytest.raises(ValueError) as error:
        plot_per_class_accuracy(tmp_path / "p.png", [0.5, 0.5], [3, 2, 1], "t")
    assert str(error.value) == ("need one entry per class in each input, got lengths "
                                "{'per_class_accuracy': 2, 'class_counts': 3}")
    with pytest.raises(ValueError, match="'class_names': 2"):
        plot_per_class_accuracy(tmp_path / "p.png", [0.5] * 3, [3, 2, 1], "t", ["a", "b"])
    assert not (tmp_path / "c.csv").exists() and not (tmp_path / "p.png").exists()


@pytest.fixture
def figures(monkeypatch):
    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kw: drawn.append(self))
    return drawn


def test_the_plot_draws_each_class_in_its_slot_on_fixed_axes(tmp_path, figures):
    counts = [3, 500, 20, 150, 7]                    # sorted: classes 1, 3, 2, 4, 0
    plot_per_class_accuracy(tmp_path / "p.png", [0.0, 1.0, None, 0.5, 0.25], counts, "t")
    ax, count_ax = figures[0].axes
    assert ax.patches[0].get_data().edges.tolist() == [-0.5, 0.5, 1.5, 2.5, 3.5, 4.5]   # one slot per class
    untested = [line for line in ax.lines if line.get_marker() == "x"][0]
    assert untested.get_xdata().tolist() == [2] and untested.get_ydata().tolist() == [0]
    assert ax.get_xlim() == (-0.5, 4.5) and ax.get_ylim() == (0, 125)
    assert ax.get_yticks().tolist() == [0, 20, 40, 60, 80, 100]
    assert figures[0].legends[0]._ncols == 3                                            # one row
    assert count_ax.lines[0].get_xdata().tolist() == [0, 1, 2, 3, 4]
    assert count_ax.get_ylabel() == "training images (log scale)"
    assert [t.get_position() for t in ax.texts] == [(0.5, 123), (2.0, 123), (3.5, 123)]   # above the 100% tick
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3", "2", "4", "0"]      # class ids without names


def test_the_plot_keeps_class_order_on_equal_counts_and_labels_up_to_30_classes(tmp_path, figures):
    plot_per_class_accuracy(tmp_path / "p.png", [0.1, 0.2, 0.3, 0.4], [5, 9, 5, 9], "t", ["a", "b", "c", "d"])
    assert [t.get_text() for t in figures[0].axes[0].get_xticklabels()] == ["b", "d", "a", "c"]
    accuracy = [i / 100 for i in range(40)]     # 40 classes: numpy's default sort would reorder equal counts
    plot_per_class_accuracy(tmp_path / "p.png", accuracy, [5, 9] * 20, "t")
    bars = figures.pop().axes[0].patches[0].get_data().values
    assert bars.tolist() == [100 * accuracy[i] for i in [*range(1, 40, 2), *range(0, 40, 2)]]   # 9s, then 5s
    plot_per_class_accuracy(tmp_path / "p.png", [0.5] * 30, list(range(30, 0, -1)), "t")
    assert [t.get_text() for t in figures[1].axes[0].get_xticklabels()] == [str(i) for i in range(30)]
    assert figures[1].axes[0].get_xlabel() == ""


def test_the_plot_uses_the_given_thresholds_and_skips_empty_groups(tmp_path, figures):
    plot_per_class_accuracy(tmp_path / "p.png", [1.0, 0.5, 0.0], [60, 10, 4], "t", many_threshold=50,
                            few_threshold=5)                 # 10 is medium here, few at the default 20
    ax = figures[0].axes[0]
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"] == [0.5, 1.5]
    assert [t.get_text() for t in ax.texts] == [
        "Many (>50)\n1 classes\nmean 100.0%", "Medium (5-50)\n1 classes\nmean 50.0%", "Few (<5)\n1 classes\nmean 0.0%"]
    plot_per_class_accuracy(tmp_path / "p.png", [1.0, 0.5], [8, 4], "t")   # both few at the default thresholds
    ax = figures[1].axes[0]
    assert [t.get_text() for t in ax.texts] == ["Few (<20)\n2 classes\nmean 75.0%"]
    assert [line for line in ax.lines if line.get_linestyle() == ":"] == []             # no boundary before the first
    assert [(s[0][0], s[1][0], s[0][1]) for c in ax.collections for s in c.get_segments()] == [(-0.5, 1.5, 75.0)]


@pytest.mark.filterwarnings("ignore:Data has no positive values")  # matplotlib, on the log axis
def test_the_count_axis_of_classes_without_training_images_still_has_a_range(tmp_path, figures):
    plot_per_class_accuracy(tmp_path / "p.png", [0.5, 0.5], [0, 0], "t")
    low, high = figures[0].axes[1].get_ylim()
    assert low == 0.5 and math.isclose(high, 0.5 * 2 ** 1.25)        # the max count is taken as at least 1
    plot_per_class_accuracy(tmp_path / "p.png", [0.5] * 3, [0, 1, 4], "t")
    assert figures[1].axes[1].get_ylim()[0] == 1 / 1.5               # the smallest count above 0
