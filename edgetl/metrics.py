"""What a training run reports about itself: accuracy, per-class scores, the confusion matrix
(metrics.json) and the two PNG plots of RUN_DIR."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CURVES_PNG = "training_curves.png"
CONFUSION_PNG = "confusion_matrix.png"


def evaluate(probabilities: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    n = len(classes)
    pred = probabilities.argmax(axis=1)
    cm = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(labels, pred, strict=True):
        cm[t, p] += 1
    per_class = {}
    for i, c in enumerate(classes):
        tp = cm[i, i]
        prec = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        rec = tp / cm[i].sum() if cm[i].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[c] = {
            "precision": float(prec),
            "recall": float(rec),
            "f1": float(f1),
            "support": int(cm[i].sum()),
        }
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "count": len(labels),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "classes": classes,
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: dict[str, list[float]], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        offset = 0
        for stage in ("stage1", "stage2"):
            for split in ("", "val_"):
                vals = history.get(f"{stage}_{split}{metric}")
                if vals:
                    xs = np.arange(offset + 1, offset + len(vals) + 1)
                    ax.plot(xs, vals, marker=".", label=f"{stage} {split or 'train_'}{metric}")
            offset += len(history.get(f"{stage}_{metric}", []))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(metrics: dict, path: Path) -> None:
    plt = _pyplot()
    cm = np.asarray(metrics["confusion_matrix"])
    classes = metrics["classes"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    ax.set_title(f"{metrics['split']}: accuracy {metrics['accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
