"""Does identity pre-training help age training? Two arms on the UTKFace development photos.

    python bench/pretrain_evidence.py                     # the reported run (docs/benchmarks.md)
    python bench/pretrain_evidence.py --photos 300 --views 3 --pre-epochs 1 --epochs 1   # smoke

No identity-labelled face set is at hand here, so the identity data is built from the
development photos themselves: each TRAINING photo (never a validation one) is one
"identity" and `--views` augmentations of it (random crop, flip, colour jitter; fixed per
view) are its images. That is instance discrimination with the AM-softmax loss: it has
real identity structure (views of one face against views of other faces), but it is not
a set of real people photographed many times, so it says how the machinery transfers, not
what MS-Celeb pre-training gives (LAE Table 2).

Steps (fixed seeds throughout):
  1. utkface-dev packed at --size px (cached as bench/utkface_dev.py does), duplicates
     handled by glae.data.deduplicate, the fixed 80/20 split random_split(n, (0.8, 0.2), 0);
  2. the identity set: --photos training photos (a random subset; all with --photos 0) x
     --views views, written as a packed identity file (prepare's layout) and pre-trained
     with glae.pretrain for --pre-epochs epochs (verification on held-out photos after each);
  3. age training (head gap, l_base, stage 1 only: stage 2 does not touch the backbone)
     for --epochs epochs, twice with the same seed, batches and schedule: from scratch and
     from the pre-trained backbone; the validation MAE after every epoch of both arms.
Output: the verification figures per pre-training epoch, the two arms' MAE per epoch, and
a JSON report in --out.
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
from glae import _C  # noqa: E402
from glae.config import Config  # noqa: E402
from glae.data import PackedDataset, deduplicate, random_split, write_packed  # noqa: E402
from glae.model import Model  # noqa: E402
from glae.pretraining import PretrainConfig, Pretrainer  # noqa: E402
from glae.train import Dataset, Trainer  # noqa: E402

from utkface_dev import DEFAULT_DATA, packed_file  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="UTKFace image folder")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "glae-cache"))
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "glae-pretrain-evidence"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--photos", type=int, default=2400, help="training photos made identities (0: all)")
    p.add_argument("--views", type=int, default=4, help="augmented views per photo")
    p.add_argument("--pre-epochs", type=int, default=8)
    p.add_argument("--pre-milestones", default="5,7")
    p.add_argument("--pre-batch", type=int, default=64)
    p.add_argument("--pre-lr", type=float, default=0.1, help="base lr, scaled by batch / 256")
    p.add_argument("--epochs", type=int, default=4, help="age-training epochs of each arm")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.004, help="age peak lr (OneCycle, not scaled)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    folder = os.path.abspath(args.data)
    if not os.path.isdir(folder):
        print(f"bench/pretrain_evidence.py: {folder} absent; nothing to do")
        return 0
    os.makedirs(args.out, exist_ok=True)
    _C.set_num_threads(args.threads)
    t_start = time.perf_counter()
    packed = PackedDataset(packed_file(folder, args.size, args.cache))
    kept, _ = deduplicate(packed.hashes, packed.ages)
    tr, va = random_split(len(kept), (0.8, 0.2), seed=0)
    images = np.ascontiguousarray(np.asarray(packed.images))
    train = Dataset(images[kept[tr]], packed.ages[kept[tr]])
    val = Dataset(images[kept[va]], packed.ages[kept[va]])
    print(f"{len(train)} training, {len(val)} validation photos at {args.size} px", flush=True)

    # 2. the identity set: views of training photos only
    rng = np.random.default_rng(0)
    photos = np.arange(len(train)) if args.photos <= 0 else \
        np.sort(rng.permutation(len(train))[:args.photos])
    views = [_C.augment_batch(train.images, photos.astype(np.int64), args.size, 11, v,
                              dtype="uint8", crop=True, flip=0.5, jitter=True,
                              randaugment=False, norm="glae") for v in range(args.views)]
    ids_images = np.stack(views, axis=1).reshape(-1, args.size, args.size, 3)
    ids = np.repeat(np.arange(len(photos), dtype=np.int64), args.views)
    id_file = os.path.join(args.out, "views.glaepack")
    write_packed(id_file, ids_images, np.full(len(ids), np.nan), identities=ids,
                 paths=[f"utkface-dev train photo {photos[i]} view {v}" for i in range(len(photos))
                        for v in range(args.views)],
                 meta={"source": "bench/pretrain_evidence.py: augmented views of utkface-dev "
                                 "training photos, one identity per photo"})
    print(f"identity set: {len(photos)} photos x {args.views} views = {len(ids)} images "
          f"({id_file})", flush=True)
    pcfg = PretrainConfig(image_size=args.size, batch_size=args.pre_batch, epochs=args.pre_epochs,
                          milestones=tuple(int(v) for v in args.pre_milestones.split(",")),
                          base_lr=args.pre_lr, val_identities=0.05, val_pairs=3000, seed=0,
                          threads=args.threads,
                          # colour jitter on top of the views' own: colour alone must not
                          # tell two photos apart
                          augment={"crop": True, "flip": True, "color_jitter": True,
                                   "randaugment": False})
    t0 = time.perf_counter()
    run = Pretrainer(id_file, pcfg, out_dir=os.path.join(args.out, "pretrain"), progress=False,
                     log=lambda s: print(s, flush=True)).fit()
    pre_s = time.perf_counter() - t0
    backbone = os.path.join(args.out, "pretrain", "backbone.safetensors")

    # 3. the two arms
    arms, arm_s = {}, {}
    for arm, pretrained in (("scratch", ""), ("pretrained", backbone)):
        cfg = Config(backbone="resnet18", head="gap", loss="base", image_size=args.size,
                     batch_size=args.batch, stage1_epochs=args.epochs, stage2_epochs=0,
                     base_lr1=args.lr, linear_scaling=False, seed=0, threads=args.threads,
                     pretrained=pretrained,
                     augment={"crop": True, "flip": True, "color_jitter": True, "randaugment": False})
        out = os.path.join(args.out, arm)
        t0 = time.perf_counter()
        trainer = Trainer(Model.from_config(cfg), cfg, train, val, out_dir=out, progress=False,
                          log=lambda s, a=arm: print(f"[{a}] {s}", flush=True))
        trainer.fit()
        arm_s[arm] = time.perf_counter() - t0
        with open(os.path.join(out, "log.jsonl")) as f:
            arms[arm] = [json.loads(line)["val"]["vanilla"]["mae"] for line in f]
    mean_mae = float(np.mean(np.abs(val.ages - train.ages.mean())))
    print("\nverification on held-out photos (views of one photo vs of two):")
    for e in run.history:
        v = e["verification"]
        print(f"  epoch {e['epoch']}: accuracy {v['accuracy']:.3f}, TAR@FAR=1e-3 "
              f"{v['tar_at_far'] if v['tar_at_far'] is None else round(v['tar_at_far'], 3)}, "
              f"loss {e.get('loss', float('nan')):.3f}")
    print("\nvalidation MAE after each age epoch (gap head, l_base):")
    print("  epoch    " + "".join(f"{k + 1:>8}" for k in range(args.epochs)))
    for arm, maes in arms.items():
        print(f"  {arm:<9}" + "".join(f"{m:>8.2f}" for m in maes))
    print(f"(always predicting the training mean: MAE {mean_mae:.2f})")
    wall = time.perf_counter() - t_start
    print(f"wall {wall:.0f} s (pre-training {pre_s:.0f} s, {', '.join(f'{a} {s:.0f} s' for a, s in arm_s.items())}); "
          f"load average now {os.getloadavg()[0]:.1f}; {args.threads} engine thread(s)")
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"args": vars(args), "verification": run.history, "val_mae": arms,
                   "mean_predictor_mae": mean_mae, "wall_s": wall}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
