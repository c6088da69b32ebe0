"""glae.plots against the real metrics API and a real trainer log: every figure is drawn to
a PNG with the Agg backend (no display needed). Skipped where matplotlib is absent."""
import json
import os

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import glae  # noqa: E402
from glae import plots  # noqa: E402
from glae.data import synthetic_faces  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC and os.path.getsize(path) > 1000


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny real two-stage run (16 px, 1 + 1 epochs): its log.jsonl, the trainer's
    predictions and reports, so the figures see exactly what glae produces."""
    out = tmp_path_factory.mktemp("run")
    images, ages = synthetic_faces(96, size=16, seed=3)
    tr, va = np.arange(64), np.arange(64, 96)
    model = glae.Model(image_size=16, batch_size=16, stage1_epochs=1, stage2_epochs=1,
                       base_lr1=0.005, base_lr2=0.002, linear_scaling=False, threads=1,
                       augment={"crop": False, "flip": True, "color_jitter": False,
                                "randaugment": False})
    trainer = model.fit((images[tr], ages[tr]), (images[va], ages[va]), out_dir=str(out),
                        progress=False, log=None)
    val = glae.Dataset(images[va], ages[va])
    pred = trainer.predict(val)
    return {"out": out, "images": images[va], "y": ages[va], "train_ages": ages[tr],
            "pred": pred, "reports": trainer.evaluate(stage=2)}


def test_per_age_mae(run, tmp_path):
    y, p = run["y"], run["pred"]
    path = tmp_path / "fig1.png"
    fig = plots.per_age_mae({h: (y, p[h]) for h in ("vanilla", "balanced", "routed")},
                            train_ages=run["train_ages"], path=str(path))
    assert _is_png(path)
    ax = fig.axes[-1] if len(fig.axes) == 1 else [a for a in fig.axes if a.lines][0]
    # three curves and three dashed CMAE lines
    assert len(ax.lines) == 6
    assert not list(tmp_path.glob("*.tmp*"))


def test_per_age_mae_ages_above_100_and_no_histogram(tmp_path):
    # UTKFace has ages up to 116: the default axis grows instead of raising
    y = np.array([1, 5, 30, 30, 90, 116], np.float32)
    fig = plots.per_age_mae({"model": (y, y + 2)}, path=tmp_path / "a.png", cmae_lines=False)
    assert _is_png(tmp_path / "a.png")
    assert fig.axes[0].get_xlim()[1] >= 116
    with pytest.raises(ValueError):
        plots.per_age_mae({})


def test_routing_usage(run, tmp_path):
    path = tmp_path / "fig4.png"
    plots.routing_usage(run["y"], run["pred"]["choice"], path=path)
    assert _is_png(path)


def test_routing_usage_with_each_answers_group_error(tmp_path):
    """errors= adds a panel with each answer's MAE per group (issue 19): the bars are the
    metrics' group MAE, an empty group a zero bar."""
    y = np.array([3, 15, 40, 50, 70], np.float32)
    preds = {"vanilla": y + [4, 4, 1, 1, 9], "balanced": y + [2, 2, 3, 3, 2]}
    preds["routed"] = np.where([1, 1, 0, 0, 1], preds["balanced"], preds["vanilla"])
    fig = plots.routing_usage(y, np.array([1, 1, 0, 0, 1]), errors=preds, path=tmp_path / "e.png")
    assert _is_png(tmp_path / "e.png") and len(fig.axes) == 2
    heights = [round(p.get_height(), 6) for p in fig.axes[1].patches]
    assert heights == [4, 1, 9, 2, 3, 2, 2, 1, 2]  # per answer: 0-17, 18-65, 66-100


def test_routing_usage_single_age_group_and_empty_group(tmp_path):
    # GLAE's 10-year groups end with 90-100 (age 100 belongs to it); 80-89 is empty here
    y = np.array([3, 15, 40, 100, 100], np.float32)
    choice = np.array([1, 1, 0, 1, 0])  # int64 from a user is fine
    fig = plots.routing_usage(y, choice, edges=glae.metrics.GLAE_GROUPS, path=tmp_path / "g.png")
    assert _is_png(tmp_path / "g.png")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[-1].startswith("90-100") and "n=2" in labels[-1]
    assert "n=0" in labels[-2]


def test_scatter(run, tmp_path):
    plots.scatter(run["y"], run["pred"]["routed"], path=tmp_path / "s.png")
    plots.scatter(run["y"], run["pred"]["routed"], choice=run["pred"]["choice"],
                  path=tmp_path / "s2.png")
    assert _is_png(tmp_path / "s.png") and _is_png(tmp_path / "s2.png")
    with pytest.raises(ValueError):
        plots.scatter([1, 2], [1, 2, 3])


def test_training_curves_from_the_trainers_log(run, tmp_path):
    log = run["out"] / "log.jsonl"
    entries = [json.loads(line) for line in open(log)]
    assert [e["stage"] for e in entries] == [1, 2]
    for src in (str(log), run["out"], entries):  # file, folder, entries
        path = tmp_path / "curves.png"
        fig = plots.training_curves(src, path=path)
        assert _is_png(path)
        loss_ax, val_ax = fig.axes[:2]
        assert {ln.get_label() for ln in loss_ax.lines} >= {"total"}
        labels = {ln.get_label() for ln in val_ax.lines}
        assert {"vanilla MAE", "vanilla CMAE", "routed MAE", "balanced CMAE"} <= labels


def test_training_curves_leave_out_empty_parts_and_split_the_stages():
    """A gap head reports local = 0 and holistic = total: only "total" is drawn; stage 2's
    losses (another head, other batches) are a segment of their own, in the same colour."""
    entries = [{"stage": s, "epoch": e, "train": {"total": t, "local": 0.0, "holistic": t}}
               for s, e, t in ((1, 1, 5.0), (1, 2, 4.0), (2, 1, 7.0), (2, 2, 6.5))]
    loss_ax = plots.training_curves(entries).axes[0]
    drawn = [ln for ln in loss_ax.lines if ln.get_linestyle() != ":"]
    assert [ln.get_label() for ln in drawn][0] == "total" and len(drawn) == 2
    assert [list(ln.get_xdata()) for ln in drawn] == [[1, 2], [3, 4]]
    assert drawn[0].get_color() == drawn[1].get_color()
    for e in entries:  # an fr+pa head (total = local + holistic): both parts are drawn
        e["train"].update(local=1.0, holistic=e["train"]["total"] - 1.0)
    labels = {ln.get_label() for ln in plots.training_curves(entries).axes[0].lines}
    assert {"total", "local", "holistic"} <= labels


def test_training_curves_without_validation(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"stage": 1, "epoch": 1, "seconds": 1.0, "images_per_s": 9.0,
                               "train": {"total": 3.0, "lr": 0.1}}) + "\n")
    plots.training_curves(log, path=tmp_path / "c.png")
    assert _is_png(tmp_path / "c.png")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError):
        plots.training_curves(empty)


def test_faces(run, tmp_path):
    p = run["pred"]
    plots.faces(run["images"], run["y"], {"routed": p["routed"], "vanilla": p["vanilla"]},
                n=10, ncols=5, path=tmp_path / "f.png")
    assert _is_png(tmp_path / "f.png")
    # explicit picks, and a PackedDataset-like indexable (not an ndarray)
    plots.faces(list(run["images"]), run["y"], {}, pick=[0, 3], path=tmp_path / "f2.png")
    assert _is_png(tmp_path / "f2.png")


def test_table(run):
    text = plots.table(run["reports"])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["MAE", "CMAE", "AAR"]
    assert [ln.split()[0] for ln in lines[2:]] == ["vanilla", "balanced", "routed"]
    routed = run["reports"]["routed"]
    assert f"{routed['mae']:.2f}" in lines[4] and f"{routed['cmae']:.2f}" in lines[4]
    # an empty group is a dash, never "nan"/"None"
    rep = glae.metrics.report(np.array([20.0, 30.0]), np.array([21.0, 33.0]))
    t = plots.table({"m": rep})
    assert "-" in t.splitlines()[2] and "nan" not in t and "None" not in t
