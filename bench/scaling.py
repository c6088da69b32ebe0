"""Data-parallel scaling: images/s of training steps on 1 and 2 (or more) ranks started by
mpirun, and the all-reduce's share of a step (docs/distributed.md).

    python bench/scaling.py                         # CPU, MPI: 1 and 2 ranks, cores split
    python bench/scaling.py --ranks 1 2 4 --size 112 --batch 32 --backbone resnet50
    python bench/scaling.py --device cuda           # GPUs: NCCL when built with it and
                                                    # one GPU per rank, else through the host
    GLAE_NCCL=0 python bench/scaling.py --device cuda   # 2 ranks on one GPU over MPI

The global batch is fixed (--batch) and shared by the ranks, as in training: 2 ranks each
run half the images. On the CPU every run uses the same cores in all (--cores, default all
this process may use), split between its ranks, so the table compares ways of using one
machine; a rank per node is where the CPU path pays off. Each rank times its step (forward,
backward, one all-reduce of the flat gradient buffer, SGD) over --steps steps after
--warmup, and the all-reduce alone; rank 0 prints the table row. A benchmark, not a test.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def worker(a):
    sys.path.insert(0, ROOT)
    import glae
    from glae import distributed as dist

    w = dist.world()
    m = glae.Model(backbone=a.backbone, head="fr+pa", image_size=a.size, batch_size=a.batch,
                   device=a.device, threads=a.threads, seed=0)
    core = m.core
    per = a.batch // w.size
    rng = np.random.default_rng(w.rank)
    x = rng.integers(0, 256, (per, a.size, a.size, 3), dtype=np.uint8)
    ages = rng.uniform(5, 80, per).astype(np.float32)
    end = core.group_range("head")[1]
    cuda = a.device.startswith("cuda")
    first = core.param_table()[0][0]

    def sync():
        if cuda:  # a copy back waits for everything queued on the model's stream
            core.get(first)

    step_t, ar_t = [], []
    for i in range(a.warmup + a.steps):
        w.barrier()
        t0 = time.perf_counter()
        core.zero_grad()
        core.train_step_async(x, ages, None, stage=1, norm="glae")
        if cuda:
            sync()
        t1 = time.perf_counter()
        w.average_grads(core, 0, end)
        if cuda:
            sync()
        t2 = time.perf_counter()
        core.sgd_step(0.001, 0.9, 0.0, 5e-4, True, i == 0, 0, end, False)
        sync()
        t3 = time.perf_counter()
        if i >= a.warmup:
            step_t.append(t3 - t0)
            ar_t.append(t2 - t1)
    # the slowest rank sets the pace
    step = float(w.sum([np.median(step_t)])[0] / w.size)
    ar = float(w.sum([np.median(ar_t)])[0] / w.size)
    if w.is_main:
        print(json.dumps({"ranks": w.size, "threads": a.threads, "step_s": step,
                          "allreduce_s": ar, "images_per_s": a.batch / step,
                          "grad_mb": end * 4 / 2**20, "nccl": w.nccl_ready and
                          bool(getattr(w.comm, "has_nccl", False))}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16, help="global batch")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    mpirun = mpirun if os.path.exists(mpirun) else shutil.which("mpirun")
    if not mpirun:
        raise SystemExit("no mpirun: pip install mpich (then rebuild glae)")
    print(f"# {a.backbone} fr+pa, {a.size} px, global batch {a.batch}, {a.device}, "
          f"{a.cores} cores in all; median of {a.steps} steps after {a.warmup}")
    print(f"{'ranks':>5} {'thr/rank':>8} {'images/s':>9} {'step ms':>8} {'allreduce ms':>12} "
          f"{'share':>6} {'grad MB':>8} {'via':>5}")
    for n in a.ranks:
        threads = max(1, a.cores // n) if a.device == "cpu" else 4
        cmd = [mpirun, "-n", str(n), sys.executable, os.path.abspath(__file__), "--worker",
               "--backbone", a.backbone, "--size", str(a.size), "--batch", str(a.batch),
               "--steps", str(a.steps), "--warmup", str(a.warmup), "--device", a.device,
               "--threads", str(threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=ROOT)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        rows = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or not rows:
            print(f"{n:>5} failed (rc {out.returncode}): {out.stderr.strip()[-400:]}")
            continue
        r = json.loads(rows[-1])
        via = "nccl" if r["nccl"] else ("mpi" if n > 1 else "-")
        print(f"{n:>5} {threads:>8} {r['images_per_s']:>9.1f} {r['step_s'] * 1e3:>8.1f} "
              f"{r['allreduce_s'] * 1e3:>12.2f} {r['allreduce_s'] / r['step_s']:>6.1%} "
              f"{r['grad_mb']:>8.1f} {via:>5}")


if __name__ == "__main__":
    main()
