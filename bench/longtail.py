"""Long-tail study on real faces (issue 19): Adaptive Routing, the balanced head and the
trade-off between the head (adults) and the tails (children, the elderly).

    python bench/longtail.py stage1 --seeds 0,1,2   # one stage-1 representation per seed
    python bench/longtail.py stage2 --seeds 0,1,2 --arms paper,crt,sqrt   # stage-2 arms
    python bench/longtail.py                        # the tables, from the cached predictions

The reported study (docs/training.md, "Long-tail study") is these defaults: stage 1 = the
first 2 epochs (--stop1) of a 4-epoch OneCycle schedule (--epochs1), one stage-2 epoch per
arm; each stage-2 arm takes about 1 CPU-minute per seed, stage 1 about 4.

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


def tag(args, size):
    """The stage-1 recipe in the cache names: size, schedule epochs, epochs trained."""
    stop = f"-stop{args.stop1}" if args.stop1 else ""
    return f"{size}-e{args.epochs1}{stop}"


def stage1_path(args, seed, size):
    return os.path.join(args.runs, f"s1-{tag(args, size)}-seed{seed}", "last.safetensors")


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
        # --stop1 K: the first K epochs of the --epochs1-epoch schedule (fit stops on the
        # K-th epoch's last batch, evaluated and saved)
        trainer.fit(max_steps=args.stop1 * trainer.batches_per_epoch() if args.stop1 else None)
        print(f"stage 1 seed {seed} at {size} px: {time.perf_counter() - t0:.0f} s", flush=True)


# name: (stage2_head_init, stage2_sampler, stage-2 epochs, stage-2 peak lr), in the order
# `stage2` trains them (the first ones are the study's core: an interrupted run keeps them)
ARMS = {
    "paper": ("copy", "class_balanced", 1, 0.002),  # GLAE / LAE: copy, class-balanced
    "crt": ("reinit", "class_balanced", 1, 0.002),  # Kang et al.'s cRT: a fresh head
    "sqrt": ("copy", "sqrt", 1, 0.002),
    "copy_e2": ("copy", "class_balanced", 2, 0.002),
    "progressive": ("copy", "progressive", 2, 0.002),
    "crt_cls": ("reinit_classifier", "class_balanced", 1, 0.002),
    "copy_lr0.0005": ("copy", "class_balanced", 1, 0.0005),
    "copy_lr0.008": ("copy", "class_balanced", 1, 0.008),
}


def arm_path(args, arm, seed, size):
    return os.path.join(args.runs, f"{arm}-{tag(args, size)}-seed{seed}.npz")


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


# ---- the answers: every routing criterion on an arm's cached distributions -------------

def answer(d, how, a=0.0, b=0.0):
    """(ages, choice, score) of one answer on the distributions d: "vanilla",
    "balanced", GLAE's "smaller" / "bigger" (glae._C.adaptive_route), or a route_select
    criterion with thresholds a, b (ops/route.h)."""
    p = (d["pv"], d["pvf"], d["pb"], d["pbf"])
    if how in ("smaller", "bigger"):
        r = glae._C.adaptive_route(*p, how)
        return r["age"], r["choice"], r["upsilon"][:, 0] - r["upsilon"][:, 1]
    if how in ("vanilla", "balanced"):
        how, a = "blend", float(how == "balanced")
    r = glae._C.route_select(*p, how, a, b)
    return r["age"], r["choice"], r["score"]


def grid(how, score):
    """The thresholds calibration tries for a criterion: quantiles of its score on the
    calibration images (share routed from 0 to 100 %), age gates, blend weights."""
    if how == "age":
        return [(lo, hi) for lo in (0, 5, 10, 13, 16, 18, 21)
                for hi in (50, 55, 60, 65, 70, 75, 101)]
    if how == "blend":
        return [(w, 0.0) for w in np.linspace(0, 1, 11)]
    qs = np.quantile(score, np.linspace(0, 1, 21))
    eps = 1e-6 * (1 + np.abs(qs).max())
    return [(float(q), 0.0) for q in np.concatenate([qs - eps, qs + eps, [0.0]])]


def sub(d, idx):
    return {k: (v[idx] if k in ("pv", "pvf", "pb", "pbf", "ages") else v) for k, v in d.items()}


def calibrate(d, how):
    """The threshold the calibration images d choose for `how`: the smallest CMAE among
    those that keep MAE <= the vanilla head's and MAE 18-65 <= 1.03 x the vanilla's (the
    issue's goal); when none does, the smallest MAE."""
    y = d["ages"]
    van = answer(d, "vanilla")[0]
    van_mae, van_mid = M.mae(y, van), M.group_mae(y, van)["18-65"]["mae"]
    score = answer(d, how)[2] if how not in ("age", "blend") else None
    best_ok, best_any = None, None
    for a, b in grid(how, score):
        yh = answer(d, how, a, b)[0]
        mae, cm, mid = M.mae(y, yh), M.cmae(y, yh), M.group_mae(y, yh)["18-65"]["mae"]
        if mae <= van_mae and mid <= 1.03 * van_mid and (best_ok is None or cm < best_ok[0]):
            best_ok = (cm, a, b)
        if best_any is None or mae < best_any[0]:
            best_any = (mae, a, b)
    return (best_ok or best_any)[1:]


def crossfit(d, how, seed=0):
    """Calibrated answers without peeking: the validation images in two fixed halves, each
    answered with the threshold the other half chose. Returns (ages, choice, thresholds)."""
    n = len(d["ages"])
    perm = np.random.default_rng(seed).permutation(n)
    halves = (np.sort(perm[:n // 2]), np.sort(perm[n // 2:]))
    ages, choice, th = np.zeros(n, np.float32), np.zeros(n, np.int32), []
    for cal, use in (halves, halves[::-1]):
        a, b = calibrate(sub(d, cal), how)
        yh, ch, _ = answer(sub(d, use), how, a, b)
        ages[use], choice[use] = yh, ch
        th.append((a, b))
    return ages, choice, th


# answers per arm: name -> how; "*" = calibrated on the other half of the validation set
ANSWERS = {"vanilla": "vanilla", "balanced": "balanced", "routed (smaller flip-KL)": "smaller",
           "routed (bigger flip-KL)": "bigger", "age gate 18-65": ("age", 18.0, 65.0),
           "flip-KL margin*": "kl_margin", "confidence*": "confidence", "entropy*": "entropy",
           "age gate*": "age", "blend*": "blend"}


def arm_metrics(d):
    """Every answer's metrics on one arm and seed, plus the flip-KL values and the failure
    analysis of GLAE's routing."""
    y, train_ages = d["ages"], d["train_ages"]
    out = {}
    for name, how in ANSWERS.items():
        th = None
        if isinstance(how, tuple):
            yh, ch, _ = answer(d, *how)
        elif name.endswith("*"):
            yh, ch, th = crossfit(d, how)
        else:
            yh, ch, _ = answer(d, how)
        if how == "blend":  # every image gets both heads: report the balanced head's weight
            w = np.mean([a for a, _ in th])
        rep = M.report(y, yh, train_ages=train_ages, choice=ch)
        def get(part, key, field):  # an empty group or shot has no value: NaN
            v = (rep[part].get(key) or {}).get(field)
            return np.nan if v is None else v

        out[name] = {"mae": rep["mae"], "cmae": rep["cmae"], "thresholds": th,
                     **{f"mae {g}": get("group", g, "mae") for g in GROUPS},
                     **{f"{s}-shot": get("shot", s, "mae") for s in M.SHOTS},
                     **{f"to balanced {g}": (w if how == "blend" else
                                             get("routing", g, "balanced")) for g in GROUPS}}
    # flip-KL (Upsilon) of each head, and how GLAE's routing fails
    r = glae._C.adaptive_route(d["pv"], d["pvf"], d["pb"], d["pbf"], "smaller")
    u1, u2 = r["upsilon"][:, 0], r["upsilon"][:, 1]
    ev = np.abs(answer(d, "vanilla")[0] - y)
    eb = np.abs(answer(d, "balanced")[0] - y)
    sent = r["choice"] == 1
    kl = {"U1 median": np.median(u1), "U2 median": np.median(u2),
          "U1 p90": np.quantile(u1, 0.9), "U2 p90": np.quantile(u2, 0.9),
          "corr(U1, U2)": np.corrcoef(u1, u2)[0, 1],
          "share sent": sent.mean(),
          "sent, balanced worse": (eb[sent] > ev[sent]).mean() if sent.any() else np.nan,
          "kept, balanced better": (eb[~sent] < ev[~sent]).mean() if (~sent).any() else np.nan,
          "oracle MAE": np.minimum(ev, eb).mean()}
    for g, (lo, hi) in zip(GROUPS, M.TAIL_HEAD_GROUPS):
        m = sent & (M.age_class(y, None) >= lo) & (M.age_class(y, None) <= hi)
        kl[f"sent {g}, balanced worse"] = (eb[m] > ev[m]).mean() if m.any() else np.nan
    return out, {k: float(v) for k, v in kl.items()}


def mean_spread(values):
    v = np.asarray(values, np.float64)
    return v.mean(), (v.std(ddof=1) if len(v) > 1 else np.nan)


def fmt(values, pct=False, spec=".2f"):
    m, s = mean_spread(values)
    k = 100.0 if pct else 1.0
    return f"{k * m:{spec}}" if np.isnan(s) else f"{k * m:{spec}}±{k * s:{spec}}"


COLS = ["mae", "cmae", "mae 0-17", "mae 18-65", "mae 66-100", "many-shot", "medium-shot",
        "few-shot"]


def report(args, seeds, size):
    done = {}
    for arm in ARMS:
        paths = [arm_path(args, arm, s, size) for s in seeds]
        have = [p for p in paths if os.path.exists(p)]
        if have:
            done[arm] = have
    if not done:
        print("no stage-2 predictions cached yet: run `stage1` then `stage2` first")
        return {}
    results = {}
    for arm, paths in done.items():
        cache = os.path.join(args.runs, f"metrics-{arm}-{tag(args, size)}.json")
        key = [os.path.basename(p) for p in paths]
        res = None
        if os.path.exists(cache):
            with open(cache) as f:
                res = json.load(f)
            if res.get("files") != key:
                res = None
        if res is None:
            per_seed = [arm_metrics(dict(np.load(p))) for p in paths]
            res = {"files": key, "answers": [a for a, _ in per_seed], "kl": [k for _, k in per_seed]}
            with open(cache + ".tmp", "w") as f:
                json.dump(res, f)
            os.replace(cache + ".tmp", cache)
        results[arm] = res
    vanilla = []
    print(f"\nvalidation set, {size} px; mean ± sample std over seeds; * = threshold calibrated on "
          "the other half of the validation set (cross-fitted)")
    for arm, res in results.items():
        init, sampler, epochs, lr = ARMS[arm]
        print(f"\n== arm {arm}: stage2_head_init={init}, stage2_sampler={sampler}, "
              f"{epochs} epochs, lr {lr}; seeds: {len(res['answers'])}")
        head = f"{'answer':<26}" + "".join(f"{c:>14}" for c in COLS) + \
            "".join(f"{'bal ' + g:>14}" for g in GROUPS)
        print(head)
        for name in ANSWERS:
            rows = [a[name] for a in res["answers"]]
            line = f"{name:<26}" + "".join(f"{fmt([r[c] for r in rows]):>14}" for c in COLS)
            line += "".join(f"{fmt([r['to balanced ' + g] for r in rows], pct=True) + '%':>14}"
                            for g in GROUPS)
            print(line)
        # the same seeds' answers differ far less than the seeds do: paired differences
        print(f"paired against the vanilla head (answer - vanilla, same seed), then against GLAE's "
              f"routing (answer - routed (smaller flip-KL)):")
        for name in ANSWERS:
            rows = [a[name] for a in res["answers"]]
            cells = []
            for ref in ("vanilla", "routed (smaller flip-KL)"):
                base = [a[ref] for a in res["answers"]]
                for c in ("mae", "cmae", "mae 18-65"):
                    cells.append(f"{fmt([r[c] - b[c] for r, b in zip(rows, base)]):>13}")
            th = [r["thresholds"] for r in rows if r.get("thresholds")]
            note = ("  thresholds " + "; ".join(
                ",".join(f"({a:.3g}, {b:.3g})" if name.startswith("age") else f"{a:.3g}"
                         for a, b in t) for t in th)) if th else ""
            print(f"  {name:<26}" + " vs vanilla: MAE/CMAE/18-65" + "".join(cells[:3])
                  + "   vs GLAE:" + "".join(cells[3:]) + note)
        kl = res["kl"]
        print("flip-KL: " + ", ".join(f"{k} {fmt([x[k] for x in kl], spec='.3g')}" for k in
                                      ("U1 median", "U2 median", "U1 p90", "U2 p90",
                                       "corr(U1, U2)")))
        print("GLAE routing: " + ", ".join(
            f"{k} {fmt([x[k] for x in kl], pct=k != 'oracle MAE')}{'' if k == 'oracle MAE' else '%'}"
            for k in ("share sent", "sent, balanced worse", "kept, balanced better")
            + tuple(f"sent {g}, balanced worse" for g in GROUPS) + ("oracle MAE",)))
    # the arms side by side: what stage 2 changes is the balanced head (and so every routed
    # answer); paired against the papers' arm on the same seeds' stage 1
    if "paper" in results and len(results) > 1:
        ref = results["paper"]["answers"]
        print("\n== arms, paired against 'paper' (same seeds' stage 1; arm - paper):")
        for arm, res in results.items():
            if len(res["answers"]) != len(ref):
                continue
            cells = []
            for name in ("balanced", "routed (smaller flip-KL)"):
                for c in ("mae", "cmae", "mae 18-65"):
                    vals = [a[name][c] for a in res["answers"]]
                    diff = [a[name][c] - b[name][c] for a, b in zip(res["answers"], ref)]
                    cells.append(f"{fmt(vals)} ({fmt(diff)})")
            print(f"  {arm:<14} balanced MAE/CMAE/18-65: " + ", ".join(cells[:3])
                  + "; routed: " + ", ".join(cells[3:]))
    return results


def common_args(p):
    p.add_argument("--data", default=DEFAULT_DATA, help="UTKFace image folder")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "glae-cache"))
    p.add_argument("--runs", default=os.path.join(HERE, "..", "runs", "longtail"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs1", type=int, default=4)
    p.add_argument("--lr1", type=float, default=0.004)
    p.add_argument("--stop1", type=int, default=2,
                   help="train only the first K epochs of stage 1's --epochs1-epoch schedule "
                        "(0: all; default 2: the reported study, docs/training.md)")
    p.add_argument("--arms", default="", help="stage-2 arms to train (default: all of ARMS)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="report", choices=("stage1", "stage2", "report"))
    common_args(p)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.what == "report":
        report(args, seeds, args.size)
        return 0
    data = load_data(args)
    if data is None:
        print(f"bench/longtail.py: {args.data} absent; nothing to do")
        return 0
    if args.what == "stage1":
        run_stage1(args, data, seeds, args.size)
    elif args.what == "stage2":
        run_stage2(args, data, seeds, args.size, args.arms.split(",") if args.arms else list(ARMS))
    else:
        report(args, seeds, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
