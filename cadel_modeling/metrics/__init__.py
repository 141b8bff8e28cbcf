"""Long-tailed metrics (the `evaluate` module in ``long_tail_classification/``) and the reports made of them."""
from .long_tail import compute_long_tail_metrics, group_accuracies, load_metric, shot_groups, top1
from .reports import TABLE_COLUMNS, format_number, format_table, plot_per_class_accuracy, write_per_class_csv

__all__ = ["compute_long_tail_metrics", "group_accuracies", "load_metric", "shot_groups", "top1", "TABLE_COLUMNS",
           "format_number", "format_table", "plot_per_class_accuracy", "write_per_class_csv"]
