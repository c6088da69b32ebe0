"""`python -m glae <command>`: demo, prepare, train, eval, predict, export."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DEMO_HELP = """Train a small GLAE model on built-in synthetic faces, on the CPU, in a few minutes:
stage 1 (whole network, instance-balanced), stage 2 (balanced head on the frozen backbone,
class-balanced), then print MAE, CMAE, AAR and group MAE for the vanilla head, the balanced
head and Adaptive Routing, and write the log, the checkpoint and a figure. The synthetic
faces are a stand-in that lets the pipeline run anywhere, not a benchmark of real accuracy."""


def _table(rows: dict) -> str:
    groups = ("0-17", "18-65", "66-100")
    head = f"{'':<10}{'MAE':>7}{'CMAE':>7}{'AAR':>7}" + "".join(f"{'MAE ' + g:>12}" for g in groups)
    lines = [head, "-" * len(head)]
    for name, rep in rows.items():
        g = rep.get("group") or {}
        cells = []
        for key in groups:
            v = (g.get(key) or {}).get("mae")
            cells.append(f"{v:>12.2f}" if v is not None else f"{'-':>12}")
        lines.append(f"{name:<10}{rep['mae']:>7.2f}{rep['cmae']:>7.2f}"
                     f"{rep['aar_lae']['aar']:>7.2f}" + "".join(cells))
    return "\n".join(lines)


def cmd_demo(args):
    from . import plots
    from .config import Config
    from .data import random_split, synthetic_faces
    from .model import Model
    from .train import Dataset, Trainer

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for stale in ("log.jsonl",):
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    t0 = time.perf_counter()
    print(f"glae demo: writing to {out}")
    images, ages = synthetic_faces(args.n, size=args.size, seed=args.seed)
    tr, va = random_split(len(ages), (0.8, 0.2), seed=args.seed)
    train = Dataset(images[tr], ages[tr])
    val = Dataset(images[va], ages[va])
    print(f"synthetic faces: {len(tr)} training, {len(va)} validation images at {args.size} px "
          f"({time.perf_counter() - t0:.1f} s)")
    cfg = Config(backbone="resnet18", head="fr+pa", image_size=args.size,
                 batch_size=args.batch, stage1_epochs=args.epochs1, stage2_epochs=args.epochs2,
                 base_lr1=args.lr1, base_lr2=args.lr2, linear_scaling=False, seed=args.seed,
                 augment={"crop": True, "flip": True, "color_jitter": False, "randaugment": False})
    model = Model.from_config(cfg)
    trainer = Trainer(model, cfg, train, val, out_dir=out, progress=not args.no_progress)
    trainer.fit()
    rep = trainer.evaluate(stage=2)
    p = trainer.predict(val)
    print()
    print(_table({"vanilla": rep["vanilla"], "balanced": rep["balanced"], "routed": rep["routed"]}))
    mean_mae = float(np.mean(np.abs(val.ages - train.ages.mean())))
    print(f"\n(always predicting the training mean: MAE {mean_mae:.2f})")
    fig = os.path.join(out, "per_age_mae.png")
    plots.per_age_mae({"vanilla": (val.ages, p["vanilla"]), "balanced": (val.ages, p["balanced"]),
                       "routed": (val.ages, p["routed"])}, train_ages=train.ages, path=fig)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rep, f, indent=1, default=_jsonable)
    print(f"log {os.path.join(out, 'log.jsonl')}\ncheckpoint {os.path.join(out, 'best.safetensors')}"
          f"\nfigure {fig}\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def cmd_prepare(args):
    from .data import prepare

    report = prepare(args.source, args.out, size=args.size, margin=args.margin,
                     workers=args.workers, detect=args.detect, detector_weights=args.mtcnn_weights,
                     pick=args.pick)
    print(report)
    return 0


def _load_packed(path):
    from .data import PackedDataset
    from .train import Dataset

    return Dataset.from_packed(PackedDataset(path))


def cmd_train(args):
    from .config import Config
    from .model import Model
    from .train import Trainer

    cfg = Config.from_toml(args.config) if args.config else Config()
    overrides = {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "[{0123456789-tf" else value
    if overrides:
        cfg = Config.from_dict({**json.loads(cfg.to_json()), **overrides})
    train = _load_packed(args.train)
    val = _load_packed(args.val) if args.val else None
    if args.resume:
        trainer = Trainer.resume(args.resume, train, val, out_dir=args.out)
    else:
        trainer = Trainer(Model.from_config(cfg), cfg, train, val, out_dir=args.out)
    trainer.fit()
    print(f"checkpoints in {args.out}")
    return 0


def cmd_eval(args):
    from . import load
    from .train import Trainer

    model = load(args.checkpoint)
    data = _load_packed(args.data)
    trainer = Trainer(model, model.config, data, data, out_dir=None, progress=False)
    rep = trainer.evaluate(stage=2 if model.stage2_trained else 1)
    print(_table(rep))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rep, f, indent=1, default=_jsonable)
        os.replace(tmp, args.json)
        print(f"report written to {args.json}")
    return 0


def cmd_predict(args):
    from .model import load

    model = load(args.checkpoint)
    if not args.detect:
        ages = model.predict(args.images, route=args.route)
        for path, age in zip(args.images, ages):
            print(f"{path}\t{age:.1f}")
        return 0
    from . import detect as gd

    detector = gd.get_detector(args.mtcnn_weights)  # fails early when no weights are found
    no_face = 0
    for path in args.images:
        faces = model.predict_faces(path, route=args.route, margin=args.margin, weights=detector)
        if not faces:
            no_face += 1
            print(f"glae predict: no face found in {path}", file=sys.stderr)
        for i, f in enumerate(faces):
            box = ",".join(f"{v:.0f}" for v in f.box)
            print(f"{path}\t{i}\t{box}\t{f.age:.1f}")
    return 1 if no_face == len(args.images) else 0


def cmd_export(args):
    from .export import export_onnx

    try:
        export_onnx(args.checkpoint, args.output, head=args.head)
    except ImportError as e:  # the optional onnx package
        print(f"glae export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="python -m glae", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a small model on synthetic faces and report",
                       description=DEMO_HELP)
    d.add_argument("--out", default="glae-demo", help="output folder (default: ./glae-demo)")
    d.add_argument("--n", type=int, default=2400, help="synthetic images (default 2400)")
    d.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--epochs1", type=int, default=6, help="stage-1 epochs (default 6)")
    d.add_argument("--epochs2", type=int, default=2, help="stage-2 epochs (default 2)")
    d.add_argument("--lr1", type=float, default=0.005, help="stage-1 peak learning rate (OneCycle)")
    d.add_argument("--lr2", type=float, default=0.002, help="stage-2 peak learning rate (OneCycle)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    pr = sub.add_parser("prepare", help="decode, align and pack a data set")
    pr.add_argument("source", help='"utkface:FOLDER", "csv:FILE", "chalearn:FILE", "mivia:FILE" or "folders:ROOT"')
    pr.add_argument("out", help="packed file to write")
    pr.add_argument("--size", type=int, default=224)
    pr.add_argument("--margin", type=float, default=0.0)
    pr.add_argument("--workers", type=int, default=None)
    pr.add_argument("--detect", default="never", choices=("never", "missing", "always"),
                    help="run MTCNN on images without landmarks (missing) or on all (always); "
                         "one face per image, images with no face are skipped and reported")
    pr.add_argument("--pick", default="most_confident", choices=("most_confident", "largest"),
                    help="which face to keep when MTCNN finds several (default most_confident)")
    pr.add_argument("--mtcnn-weights", default=None, metavar="DIR",
                    help="folder with pnet.pt, rnet.pt, onet.pt (default: $GLAE_MTCNN_WEIGHTS "
                         "or an installed facenet-pytorch)")
    pr.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", help="two-stage training from packed files and a TOML config")
    t.add_argument("--config", help="TOML file with Config fields (see configs/)")
    t.add_argument("--train", required=True, help="packed training set")
    t.add_argument("--val", help="packed validation set")
    t.add_argument("--out", required=True, help="output folder (log, checkpoints)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    t.add_argument("--resume", help="checkpoint to resume from (exactly)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="full metric report of a checkpoint on a packed set")
    e.add_argument("checkpoint")
    e.add_argument("data", help="packed file")
    e.add_argument("--json", help="also write the report here")
    e.set_defaults(func=cmd_eval)

    pd = sub.add_parser("predict", help="print one age per image file (aligned crops), or with "
                                           "--detect one line per face found in raw photos")
    pd.add_argument("checkpoint")
    pd.add_argument("images", nargs="+")
    pd.add_argument("--route", default="smaller", choices=("smaller", "bigger", "vanilla", "balanced"))
    pd.add_argument("--detect", action="store_true",
                    help="detect every face (MTCNN), align it and print: file, face index, "
                         "box x1,y1,x2,y2, age")
    pd.add_argument("--margin", type=float, default=0.0,
                    help="alignment margin with --detect: use the one the training data was prepared with")
    pd.add_argument("--mtcnn-weights", default=None, metavar="DIR",
                    help="with --detect: folder with pnet.pt, rnet.pt, onet.pt")
    pd.set_defaults(func=cmd_predict)

    x = sub.add_parser("export", help="write an ONNX graph of the inference model")
    x.add_argument("checkpoint")
    x.add_argument("output")
    x.add_argument("--head", default="routed", choices=("routed", "vanilla", "balanced"))
    x.set_defaults(func=cmd_export)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError) as e:
        print(f"glae {args.command}: error: {e}", file=sys.stderr)
        return 2
