"""The papers' own views of a model, with matplotlib (imported lazily, Agg-safe).

- per_age_mae: per-age MAE curves over the training-set age histogram, with each curve's
  CMAE as a dashed line (GLAE Fig. 1)
- routing_usage: share of images answered by each head per age group (GLAE Fig. 4)
- scatter: predicted vs true age (optionally coloured by the head that answered)
- training_curves: training losses and validation MAE / CMAE from a trainer's log.jsonl
- faces: a grid of example faces with true and predicted ages (GLAE Fig. 3)
- table: group MAE / CMAE of several reports as text (GLAE Tables VIII-IX)

Every figure function returns the matplotlib Figure; pass `path` to also save it (written
under a temporary name, then renamed). Inputs are what glae produces: arrays of ages, the
0/1 head choices of ``Model.predict(return_head=True)`` / ``Trainer.predict``, the
dictionaries of ``glae.metrics.report`` / ``Trainer.evaluate`` and the trainer's log.
Without a display (and no MPLBACKEND) the Agg backend is chosen, so nothing here needs a
screen. In a notebook, end the call with ``;`` (the figure is shown once by the backend).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from . import metrics as M

__all__ = ["faces", "per_age_mae", "routing_usage", "scatter", "table", "training_curves"]

#: GLAE Fig. 3 / Fig. 4 colours: vanilla (the baseline) blue, balanced / ours red.
COLORS = {"vanilla": "tab:blue", "balanced": "tab:red", "routed": "tab:green"}
_CYCLE = ("tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _plt():
    import matplotlib

    chosen = getattr(matplotlib.rcParams, "_get_backend_or_none", lambda: "?")()
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                         or os.environ.get("WAYLAND_DISPLAY"))
    if chosen is None and headless and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")  # nobody chose a backend and there is no screen
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    if path:
        path = os.fspath(path)
        base, ext = os.path.splitext(path)
        tmp = f"{base}.tmp{os.getpid()}{ext}"
        try:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return fig


def _color(label, k):
    return COLORS.get(str(label).lower(), _CYCLE[k % len(_CYCLE)])


def _ages(a, name):
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    return a


def per_age_mae(results: dict, train_ages=None, num_classes=None, path=None, title=None,
                cmae_lines=True):
    """GLAE Fig. 1. results: {label: (y_true, y_pred)}, e.g. {"vanilla": (y, p_v),
    "balanced": (y, p_b), "routed": (y, p_r)}. Solid curves: MAE per integer true age
    (ages without a test image are left out); dashed: each curve's CMAE; grey bars (right
    axis): the training images per age. num_classes: ages 0..num_classes-1 (default:
    101, or more when a true or training age is above 100)."""
    if not results:
        raise ValueError("results is empty: give {label: (y_true, y_pred)}")
    pairs = {k: (_ages(y, f"{k}: y"), _ages(p, f"{k}: y_pred")) for k, (y, p) in results.items()}
    if num_classes is None:
        top = max(float(y.max()) for y, _ in pairs.values())
        if train_ages is not None and len(train_ages):
            top = max(top, float(np.max(train_ages)))
        num_classes = max(101, int(M.age_class(top, None)) + 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    ages = np.arange(num_classes)
    if train_ages is not None:
        ax2 = ax.twinx()
        t = M.age_class(np.asarray(train_ages).reshape(-1), num_classes)
        hist = np.bincount(t, minlength=num_classes)
        ax2.bar(ages, hist, color="0.82", width=1.0, zorder=0, label="training images")
        ax2.set_ylabel("training images per age")
        ax.set_zorder(ax2.get_zorder() + 1)  # curves above the bars
        ax.patch.set_visible(False)
    for k, (label, (y, yhat)) in enumerate(pairs.items()):
        mae, count = M.per_age_mae(y, yhat, num_classes=num_classes)
        present = count > 0
        c = _color(label, k)
        ax.plot(ages[present], np.asarray(mae)[present], marker=".", lw=1.2, color=c,
                label=f"{label} (MAE {M.mae(y, yhat):.2f})")
        if cmae_lines:
            cm = M.cmae(y, yhat)
            ax.axhline(cm, color=c, ls="--", lw=1.0, label=f"{label} CMAE {cm:.2f}")
    ax.set_xlabel("true age")
    ax.set_ylabel("MAE (years)")
    ax.set_xlim(-0.5, num_classes - 0.5)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper center", fontsize=8, ncol=2)
    ax.set_title(title or "MAE per age over the training age histogram")
    return _save(fig, path)


def routing_usage(y, choice, edges=M.TAIL_HEAD_GROUPS, path=None, title=None, errors=None):
    """GLAE Fig. 4: per group of true ages, the share of images that the routing answered
    with the vanilla head (blue, choice 0) and the balanced head (red, choice 1), with the
    number of images under each bar. `choice`: the 0/1 array from
    Model.predict(..., return_head=True) or Trainer.predict(...)["choice"].
    errors: {answer: ages} (e.g. Trainer.predict's "vanilla", "balanced", "routed") adds
    a second panel with each answer's MAE per group, so the usage can be read against
    which head was better where (the trade-off routing has to make)."""
    usage = M.routing_usage(y, np.asarray(choice).astype(np.int32, copy=False), edges=edges)
    labels = list(usage)  # the metrics' own labels ("0-17", ..., "100" for a one-age group)
    van = [usage[g]["vanilla"] if usage[g] else 0.0 for g in labels]
    bal = [usage[g]["balanced"] if usage[g] else 0.0 for g in labels]
    counts = [usage[g]["count"] if usage[g] else 0 for g in labels]
    plt = _plt()
    width = 1.2 * len(labels) + 2.5
    if errors:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(2 * width + 1, 3.5))
    else:
        fig, ax = plt.subplots(figsize=(width, 3.5))
    x = np.arange(len(labels))
    ax.bar(x, van, color=COLORS["vanilla"], label="vanilla")
    ax.bar(x, bal, bottom=van, color=COLORS["balanced"], label="balanced")
    ax.set_xticks(x, [f"{g}\nn={n}" for g, n in zip(labels, counts)])
    ax.set_ylabel("usage ratio")
    ax.set_xlabel("age group")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "Adaptive Routing: which head answered")
    if errors:
        k = len(errors)
        bar = 0.8 / k
        for i, (name, yhat) in enumerate(errors.items()):
            g = M.group_mae(y, _ages(yhat, name), edges)
            v = [(g.get(lab) or {}).get("mae") or 0.0 for lab in labels]
            pos = x - 0.4 + bar * (i + 0.5)
            ax2.bar(pos, v, bar, color=_color(name, i), label=name)
            for px, pv in zip(pos, v):
                ax2.text(px, pv, f"{pv:.1f}", ha="center", va="bottom", fontsize=7)
        ax2.set_xticks(x, labels)
        ax2.set_xlabel("age group")
        ax2.set_ylabel("MAE (years)")
        ax2.legend(fontsize=8)
        ax2.set_title("MAE per group of each answer")
    return _save(fig, path)


def scatter(y, yhat, choice=None, path=None, title=None):
    """Predicted vs true age with the identity line; with `choice` (0/1 per image) the
    points are coloured by the head that answered (blue vanilla, red balanced)."""
    y, yhat = _ages(y, "y"), _ages(yhat, "yhat")
    if y.shape != yhat.shape:
        raise ValueError(f"y and yhat must have the same length, got {y.size} and {yhat.size}")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if choice is None:
        ax.scatter(y, yhat, s=6, alpha=0.5)
    else:
        c = np.asarray(choice).reshape(-1)
        if c.shape != y.shape:
            raise ValueError(f"choice must have the length of y ({y.size}), got {c.size}")
        for v, name in ((0, "vanilla"), (1, "balanced")):
            m = c == v
            if m.any():
                ax.scatter(y[m], yhat[m], s=6, alpha=0.5, color=COLORS[name], label=name)
        ax.legend(loc="upper left", fontsize=8)
    hi = float(max(y.max(), yhat.max())) + 2
    lo = min(0.0, float(yhat.min()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    ax.set_xlabel("true age")
    ax.set_ylabel("predicted age")
    ax.set_title(title or f"MAE {M.mae(y, yhat):.2f}")
    return _save(fig, path)


def _log_entries(log):
    """A trainer log as a list of entries: a log.jsonl path, a folder holding one, or
    already a list of dicts."""
    if isinstance(log, (str, bytes, os.PathLike)):
        p = os.fspath(log)
        if os.path.isdir(p):
            p = os.path.join(p, "log.jsonl")
        with open(p) as f:
            entries = [json.loads(line) for line in f if line.strip()]
    else:
        entries = list(log)
    if not entries:
        raise ValueError("the training log has no entries")
    return entries


def training_curves(log, path=None, title=None):
    """Training losses (left: total and each part the engine reports; a part that is 0
    throughout or equals the total, as with a one-branch head, is left out; stage 2's
    losses are the balanced head's on class-balanced batches, so they are not joined to
    stage 1's) and validation MAE (solid) and CMAE (dashed) per head (right), per epoch,
    stage 1 then stage 2 (the dotted line marks the start of stage 2). `log`: a log.jsonl
    path, the trainer's out_dir, or a list of entries."""
    entries = _log_entries(log)
    x = np.arange(1, len(entries) + 1)
    ticks = [f"{e.get('stage', '?')}.{e.get('epoch', '?')}" for e in entries]
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = []
    for e in entries:
        for k in (e.get("train") or {}):
            if k != "lr" and k not in keys:
                keys.append(k)
    loss = {k: np.array([(e.get("train") or {}).get(k, np.nan) for e in entries], np.float64)
            for k in keys}
    keys = [k for k in keys if k == "total" or not (
        np.all(np.nan_to_num(loss[k]) == 0)
        or ("total" in loss and np.array_equal(loss[k], loss["total"], equal_nan=True)))]
    stage = np.array([e.get("stage") for e in entries])
    for k in keys:
        color = None
        for s in (1, 2):
            on = (stage == 2) if s == 2 else (stage != 2)
            if on.any():
                (line,) = a1.plot(x[on], loss[k][on], marker=".", color=color,
                                  lw=1.6 if k == "total" else 0.9,
                                  label=k if color is None else None)
                color = line.get_color()
    a1.set_ylabel("training loss")
    if keys:
        a1.legend(fontsize=8)
    any_val = False
    for k, head in enumerate(("vanilla", "balanced", "routed")):
        for metric, ls in (("mae", "-"), ("cmae", "--")):
            ys = np.array([((e.get("val") or {}).get(head) or {}).get(metric, np.nan)
                           if (e.get("val") or {}).get(head) else np.nan for e in entries],
                          dtype=np.float64)
            if not np.all(np.isnan(ys)):
                any_val = True
                a2.plot(x, ys, marker=".", ls=ls, color=_color(head, k),
                        label=f"{head} {metric.upper()}")
    a2.set_ylabel("validation error (years)")
    if any_val:
        a2.legend(fontsize=8, ncol=2)
    else:
        a2.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=a2.transAxes)
    stage2 = [i for i, e in enumerate(entries) if e.get("stage") == 2]
    for ax in (a1, a2):
        ax.set_xticks(x, ticks, fontsize=7)
        ax.set_xlabel("stage.epoch")
        if stage2 and stage2[0] > 0:
            ax.axvline(stage2[0] + 0.5, color="0.5", ls=":", lw=1)
    fig.suptitle(title or "training curves")
    fig.tight_layout()
    return _save(fig, path)


def faces(images, y, preds: dict, n=8, ncols=None, pick=None, path=None, title=None):
    """GLAE Fig. 3: a grid of faces with the true age (T) and each model's prediction (P,
    one colour per entry of `preds`, {label: predicted ages}). By default `n` faces spread
    over the range of true ages (ascending); `pick` gives explicit indices instead.
    images: uint8 (N, S, S, 3) (an array, a memmap or a PackedDataset's images)."""
    y = _ages(y, "y")
    if pick is None:
        order = np.argsort(y, kind="stable")
        pick = order[np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).astype(int))]
    pick = np.asarray(pick, dtype=np.int64).reshape(-1)
    if pick.size == 0:
        raise ValueError("no face to show")
    preds = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in (preds or {}).items()}
    ncols = int(ncols or min(len(pick), 8))
    nrows = -(-len(pick) // ncols)
    plt = _plt()
    row_h = 1.75 + 0.22 * len(preds)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, row_h * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), pick):
        ax.imshow(np.asarray(images[int(i)]))
        ax.set_title(f"T: {y[i]:.0f}", fontsize=8)
        for j, (label, p) in enumerate(preds.items()):
            ax.text(0.5, -0.06 - 0.13 * j, f"{label}: {p[i]:.1f}", transform=ax.transAxes,
                    ha="center", va="top", fontsize=7, color=_color(label, j))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def table(reports: dict, metrics=("mae", "cmae")) -> str:
    """GLAE Tables VIII-IX as text: one row per report ({name: glae.metrics.report(...)},
    e.g. Trainer.evaluate()'s {"vanilla", "balanced", "routed"}), columns: overall MAE,
    CMAE, AAR (LAE groups), then `metrics` of every age group of the reports ("-" for
    an empty group)."""
    if not reports:
        raise ValueError("reports is empty")
    groups = []
    for rep in reports.values():
        for g in rep.get("group") or {}:
            if g not in groups:
                groups.append(g)
    cols = ["MAE", "CMAE", "AAR"] + [f"{m.upper()} {g}" for g in groups for m in metrics]
    w = max(12, max(len(c) for c in cols) + 2)
    name_w = max(10, max(len(str(k)) for k in reports) + 2)
    lines = [f"{'':<{name_w}}" + "".join(f"{c:>{w}}" for c in cols)]
    lines.append("-" * len(lines[0]))
    for name, rep in reports.items():
        cells = [rep["mae"], rep["cmae"], rep["aar_lae"]["aar"]]
        for g in groups:
            v = (rep.get("group") or {}).get(g)
            cells += [(v or {}).get(m) for m in metrics]
        lines.append(f"{str(name):<{name_w}}" + "".join(
            f"{c:>{w}.2f}" if c is not None else f"{'-':>{w}}" for c in cells))
    return "\n".join(lines)
