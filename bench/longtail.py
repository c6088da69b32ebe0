"""Long-tail study on real faces (issue 19): Adaptive Routing, the balanced head and the
trade-off between the head (adults) and the tails (children, the elderly).

    python bench/longtail.py stage1 --seeds 0,1,2   # one stage-1 representation per seed
    python bench/longtail.py stage2 --seeds 0,1,2   # every stage-2 arm from those checkpoints
    python bench/longtail.py                        # the tables, from the cached predictions

Data: the UTKFace development photos (../shared/data/utkface-dev/images, or
GLAE_UTKFACE_DEV, or --data), packed at --size px and split as bench/utkface_dev.py does
(deduplicated, random 80/20, seed 0). ResNet-18, fr+pa, batch 32, from scratch, one engine
thread, crop + flip + colour jitter.

Cheap by design: stage 1 (backbone + vanilla head) is trained once per seed and saved
(RUNS/s1-<size>-seed<N>/last.safetensors). Each stage-2 arm (balanced head copied or
re-initialised, epochs, learning rate, sampler) starts from that checkpoint and writes the
validation set's four distributions (each head, image and flip) to
RUNS/<arm>-seed<N>.npz. The routing criteria are computed from those distributions
afterwards (glae._C.route_select), so they cost no training; a rerun with every cache in
place only prints.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import glae  # noqa: E402
from glae import metrics as M  # noqa: E402
from glae.config import Config  # noqa: E402
from glae.data import PackedDataset, deduplicate, random_split  # noqa: E402
from glae.model import Model  # noqa: E402
from glae.train import Dataset, Trainer, load_checkpoint  # noqa: E402
from utkface_dev import DEFAULT_DATA, packed_file  # noqa: E402

GROUPS = ("0-17", "18-65", "66-100")


def load_data(args):
    folder = os.path.abspath(args.data)
    if not os.path.isdir(folder):
        return None
    packed = PackedDataset(packed_file(folder, args.size, args.cache))
    kept, _ = deduplicate(packed.hashes, packed.ages)
    tr, va = random_split(len(kept), (0.8, 0.2), seed=0)
    images = np.asarray(packed.images)
    return (Dataset(images[kept[tr]], packed.ages[kept[tr]]),
            Dataset(images[kept[va]], packed.ages[kept[va]]))


def base_config(args, seed, size):
    return Config(backbone="resnet18", head="fr+pa", loss="base", image_size=size,
                  batch_size=32, stage1_epochs=args.epochs1, stage2_epochs=0,
                  base_lr1=args.lr1, base_lr2=0.002, linear_scaling=False, seed=seed,
                  threads=1, loader_threads=1,
                  augment={"crop": True, "flip": True, "color_jitter": True,
                           "randaugment": False})


def stage1_path(args, seed, size):
    return os.path.join(args.runs, f"s1-{size}-e{args.epochs1}-seed{seed}", "last.safetensors")


def run_stage1(args, data, seeds, size):
    train, val = data
    for seed in seeds:
        path = stage1_path(args, seed, size)
        if os.path.exists(path):
            print(f"stage 1 seed {seed} at {size} px: cached ({path})")
            continue
        cfg = base_config(args, seed, size)
        t0 = time.perf_counter()
        trainer = Trainer(Model.from_config(cfg), cfg, train, val, out_dir=os.path.dirname(path),
                          progress=False, log=lambda s, q=seed: print(f"[s1 seed {q}] {s}", flush=True))
        trainer.fit()
        print(f"stage 1 seed {seed} at {size} px: {time.perf_counter() - t0:.0f} s", flush=True)


# name: (stage2_head_init, stage2_sampler, stage-2 epochs, stage-2 peak lr), in the order
# `stage2` trains them (the first ones are the study's core: an interrupted run keeps them)
ARMS = {
    "paper": ("copy", "class_balanced", 2, 0.002),  # GLAE / LAE: copy, class-balanced
    "crt": ("reinit", "class_balanced", 2, 0.002),  # Kang et al.'s cRT: a fresh head
    "sqrt": ("copy", "sqrt", 2, 0.002),
    "copy_e1": ("copy", "class_balanced", 1, 0.002),
    "progressive": ("copy", "progressive", 2, 0.002),
    "crt_cls": ("reinit_classifier", "class_balanced", 2, 0.002),
    "copy_lr0.0005": ("copy", "class_balanced", 2, 0.0005),
    "copy_e4": ("copy", "class_balanced", 4, 0.002),
    "copy_lr0.008": ("copy", "class_balanced", 2, 0.008),
}


def arm_path(args, arm, seed, size):
    return os.path.join(args.runs, f"{arm}-{size}-e{args.epochs1}-seed{seed}.npz")


def distributions(model, data, batch=64):
    """Each head's distribution on every image and on its mirror image, (n, K) each: what
    every routing criterion works from. Evaluation resize, no augmentation."""
    from glae.model import eval_augment

    cfg = model.config
    out = {"pv": [], "pvf": [], "pb": [], "pbf": []}
    for start in range(0, len(data), batch):
        idx = np.arange(start, min(start + batch, len(data)), dtype=np.int64)
        x = glae._C.augment_batch(data.images, idx, cfg.image_size, cfg.seed, 0, dtype="uint8",
                                  threads=model.core.threads, **eval_augment(cfg))
        for suffix, xs in (("", x), ("f", np.ascontiguousarray(x[:, :, ::-1]))):
            r = model.core.forward(xs, training=False, norm=cfg.normalization)
            out["pv" + suffix].append(r["vanilla"])
            out["pb" + suffix].append(r["balanced"])
    return {k: np.concatenate(v) for k, v in out.items()}


def run_stage2(args, data, seeds, size, arms):
    from glae.model import _Restore

    train, val = data
    for arm in arms:
        init, sampler, epochs, lr = ARMS[arm]
        for seed in seeds:
            path = arm_path(args, arm, seed, size)
            if os.path.exists(path):
                continue
            model, cfg, _ = load_checkpoint(stage1_path(args, seed, size), _Restore)
            cfg = cfg.replace(stage2_head_init=init, stage2_sampler=sampler,
                              stage2_epochs=epochs, base_lr2=lr)
            model.config = cfg
            t0 = time.perf_counter()
            trainer = Trainer(model, cfg, train, None, progress=False,
                              log=lambda s, a=arm, q=seed: print(f"[{a} seed {q}] {s}", flush=True))
            trainer.state.update(stage=2, epoch=0, batch=0, step=0)
            trainer.fit()
            d = distributions(model, val)
            np.savez(path + ".tmp.npz", ages=val.ages, train_ages=train.ages, **d)
            os.replace(path + ".tmp.npz", path)
            print(f"{arm} seed {seed} at {size} px: {time.perf_counter() - t0:.0f} s", flush=True)


def common_args(p):
    p.add_argument("--data", default=DEFAULT_DATA, help="UTKFace image folder")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "glae-cache"))
    p.add_argument("--runs", default=os.path.join(HERE, "..", "runs", "longtail"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs1", type=int, default=4)
    p.add_argument("--lr1", type=float, default=0.004)
    p.add_argument("--arms", default="", help="stage-2 arms to train (default: all of ARMS)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="report", choices=("stage1", "stage2", "report"))
    common_args(p)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_data(args)
    if data is None:
        print(f"bench/longtail.py: {args.data} absent; nothing to do")
        return 0
    if args.what == "stage1":
        run_stage1(args, data, seeds, args.size)
    elif args.what == "stage2":
        run_stage2(args, data, seeds, args.size, args.arms.split(",") if args.arms else list(ARMS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
