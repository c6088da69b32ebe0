"""Development run on real faces: the UTKFace development subset, ResNet-18 at 64 px, CPU.

    python bench/utkface_dev.py                        # the reported run (see docs/training.md)
    python bench/utkface_dev.py --epochs1 1 --epochs2 1 --limit 800   # a quick smoke run

Data: ../shared/data/utkface-dev/images (or GLAE_UTKFACE_DEV, or --data); skipped with a
message when absent. The folder is prepared once to a packed file at 64 px
(`glae.data.prepare("utkface:FOLDER")`, UTKFace chips are already aligned: centre crop +
resize) and cached in --cache (default: $TMPDIR/glae-cache). Byte-identical duplicates are
handled by `glae.data.deduplicate` (copies dropped, conflicting ages dropped), then a fixed
80/20 split: `glae.data.random_split(n, (0.8, 0.2), seed=0)`.

Two runs of the trainer with the same budget:
  1. head "gap", loss l_base: stage 1 (the standard baseline), plus its stage 2;
  2. head "fr+pa" (GLAE): both stages.
Printed: MAE, CMAE and group MAE (0-17 / 18-65 / 66-100) for gap l_base (vanilla head),
fr+pa vanilla, fr+pa balanced, fr+pa Adaptive Routing; the full reports go to a JSON file.
This is a development check that the whole pipeline learns on real faces, not a paper
number: 64 px, a few epochs, from scratch (no ImageNet / identity pre-training).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import glae  # noqa: E402
from glae.config import Config  # noqa: E402
from glae.data import PackedDataset, deduplicate, prepare, random_split  # noqa: E402
from glae.model import Model  # noqa: E402
from glae.train import Dataset, Trainer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.environ.get("GLAE_UTKFACE_DEV",
                              os.path.join(HERE, "..", "..", "shared", "data", "utkface-dev", "images"))
GROUPS = ("0-17", "18-65", "66-100")


def packed_file(folder, size, cache):
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"utkface-dev-{size}.glae")
    if os.path.exists(path):
        try:
            PackedDataset(path)
            print(f"reusing {path}")
            return path
        except ValueError as e:  # a stale or broken cache: rebuild it
            print(f"cached file unusable ({e}); preparing again")
    t0 = time.perf_counter()
    rep = prepare(f"utkface:{folder}", path, size=size)
    print(f"prepared {rep.n_used} images at {size} px into {path} in {time.perf_counter() - t0:.0f} s")
    return path


def table(rows):
    head = f"{'':<22}{'MAE':>7}{'CMAE':>7}" + "".join(f"{'MAE ' + g:>12}" for g in GROUPS)
    lines = [head, "-" * len(head)]
    for name, rep in rows.items():
        cells = []
        for g in GROUPS:
            v = (rep["group"].get(g) or {}).get("mae")
            cells.append(f"{v:>12.2f}" if v is not None else f"{'-':>12}")
        lines.append(f"{name:<22}{rep['mae']:>7.2f}{rep['cmae']:>7.2f}" + "".join(cells))
    return "\n".join(lines)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="UTKFace image folder")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "glae-cache"))
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "glae-utkface-dev"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs1", type=int, default=4, help="stage-1 epochs (each run)")
    p.add_argument("--epochs2", type=int, default=1, help="stage-2 epochs (each run)")
    p.add_argument("--lr1", type=float, default=0.004, help="stage-1 peak lr (OneCycle, not scaled)")
    p.add_argument("--lr2", type=float, default=0.002, help="stage-2 peak lr (OneCycle, not scaled)")
    p.add_argument("--threads", type=int, default=1,
                   help="engine threads (default 1: on a shared 2-core machine 2 threads were "
                        "several times slower; 0: all cores)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (smoke runs)")
    p.add_argument("--heads", default="gap,fr+pa")
    p.add_argument("--json", default=None, help="report file (default OUT/report.json)")
    args = p.parse_args(argv)

    folder = os.path.abspath(args.data)
    if not os.path.isdir(folder):
        print(f"bench/utkface_dev.py: {folder} absent; nothing to do (set GLAE_UTKFACE_DEV or --data)")
        return 0
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    packed = PackedDataset(packed_file(folder, args.size, args.cache))
    kept, drep = deduplicate(packed.hashes, packed.ages)
    print(drep)
    if args.limit:  # a random subset (the files are sorted by age: never take the first N)
        kept = np.sort(np.random.default_rng(0).permutation(kept)[:args.limit])
    tr, va = random_split(len(kept), (0.8, 0.2), seed=0)
    images = np.asarray(packed.images)
    train = Dataset(images[kept[tr]], packed.ages[kept[tr]])
    val = Dataset(images[kept[va]], packed.ages[kept[va]])
    print(f"{len(train)} training, {len(val)} validation images; ResNet-18 at {args.size} px, "
          f"batch {args.batch}, {args.epochs1} + {args.epochs2} epochs, lr {args.lr1} / {args.lr2}")

    rows, reports, timings = {}, {}, {}
    for head in args.heads.split(","):
        cfg = Config(backbone="resnet18", head=head, loss="base", image_size=args.size,
                     batch_size=args.batch, stage1_epochs=args.epochs1, stage2_epochs=args.epochs2,
                     base_lr1=args.lr1, base_lr2=args.lr2, linear_scaling=False, seed=0,
                     threads=args.threads, stage2_sampler="class_balanced",  # as measured
                     augment={"crop": True, "flip": True, "color_jitter": True, "randaugment": False})
        out = os.path.join(args.out, head.replace("+", "_"))
        os.makedirs(out, exist_ok=True)
        if os.path.exists(os.path.join(out, "log.jsonl")):
            os.remove(os.path.join(out, "log.jsonl"))
        t0 = time.perf_counter()
        trainer = Trainer(Model.from_config(cfg), cfg, train, val, out_dir=out, progress=False,
                          log=lambda s, h=head: print(f"[{h}] {s}", flush=True))
        trainer.fit()
        rep = trainer.evaluate(stage=2)
        timings[head] = time.perf_counter() - t0
        reports[head] = rep
        if head == "gap":
            rows["gap l_base"] = rep["vanilla"]
        else:
            rows[f"{head} vanilla"] = rep["vanilla"]
            rows[f"{head} balanced"] = rep["balanced"]
            rows[f"{head} Adaptive Routing"] = rep["routed"]
    mean_mae = float(np.mean(np.abs(val.ages - train.ages.mean())))
    print()
    print(table(rows))
    print(f"(always predicting the training mean: MAE {mean_mae:.2f})")
    wall = time.perf_counter() - t_start
    load1 = os.getloadavg()
    print(f"wall {wall:.0f} s ({', '.join(f'{h} {s:.0f} s' for h, s in timings.items())}); "
          f"load average {load0[0]:.1f} at start, {load1[0]:.1f} at end; "
          f"{glae.get_num_threads()} engine threads")
    path = args.json or os.path.join(args.out, "report.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"args": vars(args), "n_train": len(train), "n_val": len(val),
                   "mean_predictor_mae": mean_mae, "wall_s": wall, "seconds": timings,
                   "rows": rows, "reports": reports}, f, indent=1, default=_jsonable)
    os.replace(path + ".tmp", path)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
