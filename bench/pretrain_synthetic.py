"""Identity pre-training on synthetic people: does the verification figure rise?

    python bench/pretrain_synthetic.py                    # the reported run (docs/benchmarks.md)

glae.data.synthetic_identities draws each person's face (face length, eye size, skin,
hair, grey-hair onset, wrinkles, hairline) once and renders several photographs of them
with their own pose, scale, background, lighting and noise; --ids people, --per photographs
each. A quarter of the people are held out: after every epoch their photographs are
compared in pairs (same person / different people), so the figure says whether the network
learnt to recognise faces it never trained on. Synthetic, not real faces: it checks the
machinery (loss, model, schedule, figure), not what real identity data gives.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from glae import _C  # noqa: E402
from glae.data import synthetic_identities  # noqa: E402
from glae.pretraining import PretrainConfig, Pretrainer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, default=40)
    p.add_argument("--per", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.02, help="lr, not scaled")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    _C.set_num_threads(args.threads)
    x, ids, _ = synthetic_identities(args.ids, args.per, args.size, seed=0)
    cfg = PretrainConfig(image_size=args.size, batch_size=32, epochs=args.epochs,
                         milestones=(int(args.epochs * 0.7), int(args.epochs * 0.9)),
                         base_lr=args.lr, linear_scaling=False, embed_dim=128,
                         val_identities=0.25, val_pairs=1000, seed=0, threads=args.threads)
    t0 = time.perf_counter()
    run = Pretrainer((x, ids), cfg, progress=False, log=lambda s: print(s, flush=True)).fit()
    first, last = run.history[0]["verification"], run.history[-1]["verification"]
    print(f"{args.ids} people x {args.per} photographs at {args.size} px, {len(run.train)} "
          f"training images of {run.num_ids} people, {len(run.val)} held out; verification "
          f"accuracy {first['accuracy']:.3f} untrained -> {last['accuracy']:.3f} after "
          f"{args.epochs} epochs; {time.perf_counter() - t0:.0f} s, {args.threads} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
