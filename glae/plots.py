"""The papers' own views of a model, with matplotlib (imported lazily, Agg-safe).

- per_age_mae: per-age MAE curves over the training-set age histogram (GLAE Fig. 1)
- routing_usage: share of images answered by each head per age group (GLAE Fig. 4)
- scatter: predicted vs true age
- training_curves: loss and validation MAE from a trainer's log.jsonl
- faces: a grid of example faces with true and predicted ages (GLAE Fig. 3)
Each returns the matplotlib Figure; pass `path` to also save it (written then renamed).
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import metrics as M


def _plt():
    import matplotlib

    if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    if path:
        base, ext = os.path.splitext(path)
        tmp = f"{base}.tmp{os.getpid()}{ext}"
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    return fig


def per_age_mae(results: dict, train_ages=None, num_classes=101, path=None, title=None):
    """results: {label: (y_true, y_pred)}. Curves of MAE per true age, over the histogram
    of training ages (grey bars, right axis), like GLAE Fig. 1."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    ages = np.arange(num_classes)
    if train_ages is not None:
        ax2 = ax.twinx()
        hist = np.bincount(np.clip(np.rint(train_ages).astype(int), 0, num_classes - 1),
                           minlength=num_classes)
        ax2.bar(ages, hist, color="0.85", width=1.0, zorder=0)
        ax2.set_ylabel("training images per age")
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
    for label, (y, yhat) in results.items():
        mae, count = M.per_age_mae(y, yhat, num_classes=num_classes)
        present = count > 0
        ax.plot(ages[present], np.asarray(mae)[present], marker=".", lw=1.2, label=label)
    ax.set_xlabel("true age")
    ax.set_ylabel("MAE (years)")
    ax.set_xlim(0, num_classes - 1)
    ax.legend(loc="upper center")
    ax.set_title(title or "MAE per age over the training age histogram")
    return _save(fig, path)


def routing_usage(y, choice, edges=((0, 17), (18, 65), (66, 100)), path=None):
    """Share of images answered by the vanilla (blue) and balanced (red) head per group."""
    plt = _plt()
    usage = M.routing_usage(y, choice, edges=edges)
    labels = [f"{a}-{b}" for a, b in edges]
    van = [usage[g]["vanilla"] if usage.get(g) else 0.0 for g in labels]
    bal = [usage[g]["balanced"] if usage.get(g) else 0.0 for g in labels]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(labels, van, color="tab:blue", label="vanilla")
    ax.bar(labels, bal, bottom=van, color="tab:red", label="balanced")
    ax.set_ylabel("usage ratio")
    ax.set_xlabel("age group")
    ax.set_ylim(0, 1)
    ax.legend()
    return _save(fig, path)


def scatter(y, yhat, path=None, title=None):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, yhat, s=6, alpha=0.5)
    hi = float(max(np.max(y), np.max(yhat))) + 2
    ax.plot([0, hi], [0, hi], color="k", lw=0.8)
    ax.set_xlabel("true age")
    ax.set_ylabel("predicted age")
    ax.set_title(title or f"MAE {M.mae(y, yhat):.2f}")
    return _save(fig, path)


def training_curves(log_path, path=None):
    """Training loss and validation MAE per epoch from a trainer's log.jsonl."""
    plt = _plt()
    with open(log_path) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    x = np.arange(1, len(entries) + 1)
    a1.plot(x, [e["train"].get("total", np.nan) for e in entries], marker=".")
    a1.set_xlabel("epoch (stage 1 then stage 2)")
    a1.set_ylabel("training loss")
    for head in ("vanilla", "balanced", "routed"):
        ys = [e.get("val", {}).get(head, {}).get("mae", np.nan) if e.get("val") else np.nan
              for e in entries]
        if not np.all(np.isnan(ys)):
            a2.plot(x, ys, marker=".", label=head)
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation MAE")
    a2.legend()
    return _save(fig, path)


def faces(images, y, preds: dict, n=8, path=None):
    """A row of faces in ascending true age with the true age and each model's prediction
    (GLAE Fig. 3). images uint8 (N, S, S, 3); preds {label: predicted ages}."""
    plt = _plt()
    order = np.argsort(y)
    pick = order[np.linspace(0, len(order) - 1, min(n, len(order))).astype(int)]
    fig, axes = plt.subplots(1, len(pick), figsize=(1.6 * len(pick), 2.2))
    axes = np.atleast_1d(axes)
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
    for ax, i in zip(axes, pick):
        ax.imshow(images[i])
        ax.axis("off")
        text = f"T: {y[i]:.0f}"
        ax.set_title(text, fontsize=8)
        for j, (label, p) in enumerate(preds.items()):
            ax.text(0.5, -0.08 - 0.12 * j, f"{label}: {p[i]:.1f}", transform=ax.transAxes,
                    ha="center", fontsize=7, color=colors[j % len(colors)])
    return _save(fig, path)
