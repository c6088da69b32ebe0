"""Throughput of the C augmentation pipeline behind the Loader at 224 x 224.

    python bench/loader.py [--n 384] [--batch 32] [--seconds 3]

For 1 and 2 worker threads, with and without RandAugment (crop + flip + colour jitter
always on), float32 batches (normalised by the workers) and uint8 ones (the Trainer's:
the model normalises on its device), prints images/s (wall clock), images per CPU-second of
the whole process (what one core sustains, meaningful on a shared machine), and the peak
RSS. The inputs are synthetic 224 x 224 uint8 crops with face-like smooth content.
"""
import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from glae import _C  # noqa: E402


def crops(n, size, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        f = rng.uniform(0.01, 0.05, 3)
        base = [128 + 90 * np.sin(f[c] * x + i) * np.cos(f[(c + 1) % 3] * y - c) for c in range(3)]
        img = np.stack(base, -1) + rng.normal(0, 6, (size, size, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(images, batch, threads, seconds, **cfg):
    n = len(images)
    done, epoch = 0, 0
    w0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        # an epoch of 8 passes over the crops, so the per-epoch Loader start is amortised
        order = np.concatenate([np.random.default_rng(epoch * 8 + r).permutation(n) for r in range(8)]).astype(np.int64)
        L = _C.Loader(images, None, None, order, batch, out_size=224, seed=1, epoch=epoch,
                      threads=threads, **cfg)
        for x, _, _ in L:
            done += len(x)
            if time.perf_counter() - w0 >= seconds:
                break
        del L
        epoch += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return done / wall, done / cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=384)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    images = crops(a.n, 224)
    ring_mb = a.batch * 224 * 224 * 3 * 4 / 2**20
    print(f"glae Loader, {a.n} synthetic 224x224 crops, batch {a.batch}, out 224, {os.cpu_count()} cores, "
          f"load avg {os.getloadavg()[0]:.1f}; one ring slot = {ring_mb:.1f} MB (threads + 1 slots)")
    print(f"{'pipeline':<32} {'threads':>7} {'img/s wall':>11} {'img/CPU-s':>10} {'peak RSS MB':>12}")
    # the C pipeline alone (no threads, no ring): augment_batch on one core
    idx = np.arange(a.batch, dtype=np.int64)
    for name, cfg in [("augment_batch, no RandAugment", dict(randaugment=False)),
                      ("augment_batch, RandAugment", dict(randaugment=True))]:
        k, c0 = 0, time.process_time()
        while time.process_time() - c0 < a.seconds / 2:
            _C.augment_batch(images, idx, 224, 1, k, threads=1, **cfg)
            k += 1
        cpu = (k * a.batch) / (time.process_time() - c0)
        print(f"{name:<32} {1:>7} {'':>11} {cpu:>10.0f} {peak_rss_mb():>12.0f}")
    for name, cfg in [("crop+flip+jitter+norm, float32", dict(randaugment=False)),
                      ("crop+flip+jitter, uint8", dict(randaugment=False, dtype="uint8")),
                      ("+ RandAugment N=2 M=9, float32", dict(randaugment=True)),
                      ("+ RandAugment N=2 M=9, uint8", dict(randaugment=True, dtype="uint8"))]:
        for threads in (1, 2):
            wall, cpu = run(images, a.batch, threads, a.seconds, **cfg)
            print(f"{name:<32} {threads:>7} {wall:>11.0f} {cpu:>10.0f} {peak_rss_mb():>12.0f}")


if __name__ == "__main__":
    main()
