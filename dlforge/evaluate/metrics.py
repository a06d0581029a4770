"""Figures of merit: accuracy, scikit-learn's per-class report and confusion matrix; perplexity."""
from __future__ import annotations

import math

import numpy as np


def classification_figures(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """-> accuracy, per-class precision/recall/F1/support (dict and text) and the confusion matrix."""
    from sklearn.metrics import classification_report, confusion_matrix  # 1 s to import: language models never need it
    labels = list(range(len(classes)))
    kw = dict(labels=labels, target_names=classes, digits=4, zero_division=0)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "per_class": classification_report(y_true, y_pred, output_dict=True, **kw),
        "report_text": classification_report(y_true, y_pred, **kw),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def format_confusion(cm: list[list[int]], classes: list[str]) -> str:
    """Rows: true class, columns: predicted class (as in scikit-learn)."""
    short = [c[:9] for c in classes]
    width = max(6, max(len(str(v)) for row in cm for v in row) + 1, max(map(len, short)) + 1)
    head = " " * 11 + "".join(f"{c:>{width}}" for c in short)
    rows = [f"{short[i]:>10} " + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(cm)]
    return "\n".join(["confusion matrix (rows: true, columns: predicted)", head, *rows])


def perplexity(mean_nll: float) -> float:
    return math.exp(min(mean_nll, 700.0))
