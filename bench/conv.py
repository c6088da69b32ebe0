"""conv2d throughput on the ResNet-18 conv shapes, next to the raw sgemm rate.

    python bench/conv.py                     # batch 16, inputs 112 and 224
    python bench/conv.py --sizes 224 --reps 3
    python bench/conv.py --cpu-time          # 1 thread, CPU time: robust on a busy machine

For each distinct conv shape of ResNet-18 (torchvision topology) it times the forward and
the backward (dx + dw; the stem has no dx, as the first layer of a network) and prints
GFLOP/s. Totals weight every shape by how often it occurs in the network. The reference
rate is a big float32 GEMM through glae's own sgemm binding (the OpenBLAS conv2d uses) and
through numpy.matmul (NumPy's own OpenBLAS build), measured in the same run; the ratio
column is conv rate / glae sgemm rate; the last column is the forward GEMM of that layer
alone (M x KH*KW*Cin x Cout) through the same sgemm, i.e. the rate with a free im2col.
Times are the best of --reps runs. Environment knobs read by conv.c at each call:
GLAE_CONV_CHUNK_KB (column chunk size), GLAE_CONV_OMP=1 (OpenMP im2col/col2im).
"""
import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import glae  # noqa: E402
from glae import _C  # noqa: E402


def resnet18_convs(size):
    """(name, count, Cin, Cout, k, stride, pad, H) for each distinct conv of ResNet-18."""
    s = size
    out = [("stem 7x7/2", 1, 3, 64, 7, 2, 3, s)]
    h = s // 4  # after the stride-2 stem and the stride-2 max pool
    out.append(("l1 3x3 64", 4, 64, 64, 3, 1, 1, h))
    cin = 64
    for i, c in enumerate((128, 256, 512)):
        out.append((f"l{i + 2} 3x3/2 {cin}>{c}", 1, cin, c, 3, 2, 1, h))
        h = (h + 2 - 3) // 2 + 1
        out.append((f"l{i + 2} 3x3 {c}", 3, c, c, 3, 1, 1, h))
        out.append((f"l{i + 2} 1x1/2 {cin}>{c}", 1, cin, c, 1, 2, 0, 2 * h))
        cin = c
    return out


CLOCK = time.perf_counter


def best_time(fn, reps, budget):
    """Best of `reps` calls (fewer if they exceed `budget` seconds in all; at least 1)."""
    best, spent = float("inf"), 0.0
    for _ in range(reps):
        t = CLOCK()
        fn()
        dt = CLOCK() - t
        best, spent = min(best, dt), spent + dt
        if spent > budget:
            break
    return best


def gemm_rate(fn, m, k, n, reps, rng):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    fn(a, b)
    return 2.0 * m * k * n / best_time(lambda: fn(a, b), reps, 2.0) / 1e9


def sgemm_reference(rng, reps=3):
    """glae's sgemm on a conv-like GEMM (M x 1152 x 128 = layer2's 3x3 at 224 px) and a
    square one, GFLOP/s by label."""
    ref = {}
    for label, (m, k, n) in (("M x 1152 x 128", (12544, 1152, 128)), ("2048^3", (2048, 2048, 2048))):
        ref[label] = gemm_rate(_C.sgemm, m, k, n, reps, rng)
    return ref


def conv_rates(sizes, batch, reps, rng):
    """Times conv2d forward and backward on every distinct ResNet-18 conv shape. Returns
    (rows, totals): rows [size, name, count, input, fwd GF/s, bwd GF/s, fwd s, bwd s,
    (M, K, N) of the forward GEMM]; totals {size: [fwd flop, fwd s, bwd flop, bwd s]}, each
    shape weighted by how often it occurs in the network."""
    rows = []
    tot = {}
    for size in sizes:
        for name, count, cin, cout, k, s, p, h in resnet18_convs(size):
            n = batch
            x = rng.standard_normal((n, h, h, cin)).astype(np.float32)
            w = (rng.standard_normal((cout, k, k, cin)) * 0.05).astype(np.float32)
            y = _C.conv2d_forward(x, w, None, s, p)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            need_dx = not name.startswith("stem")
            oh, ow = y.shape[1:3]
            flop = 2.0 * n * oh * ow * cout * k * k * cin
            tf = best_time(lambda: _C.conv2d_forward(x, w, None, s, p), reps, 1.0)
            tb = best_time(lambda: _C.conv2d_backward(dy, x, w, s, p, False, need_dx=need_dx),
                           reps, 2.0)
            fb = flop * (2 if need_dx else 1)
            rows.append([size, name, count, f"{n}x{h}x{h}x{cin}", flop / tf / 1e9, fb / tb / 1e9,
                         tf, tb, (n * oh * ow, k * k * cin, cout)])
            t = tot.setdefault(size, [0.0, 0.0, 0.0, 0.0])
            t[0] += count * flop
            t[1] += count * tf
            t[2] += count * fb
            t[3] += count * tb
            del x, w, y, dy
    return rows, tot


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="0: leave the default")
    ap.add_argument("--cpu-time", action="store_true",
                    help="1 thread, timed by the thread's CPU time: per-core rates that other "
                         "processes on a shared machine do not skew")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        args.threads = 1
        CLOCK = time.thread_time
    if args.threads:
        glae.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]

    # the reference: glae's sgemm on a conv-like GEMM (M x 1152 x 128 = layer2's 3x3 at
    # 224 px) and a square one; NumPy's matmul last, so its OpenBLAS threads (another
    # copy of the library) do not spin while ours run
    ref = sgemm_reference(rng)
    sgemm = max(ref.values())

    rows, tot = conv_rates(args.sizes, args.batch, args.reps, rng)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the forward GEMM of each layer alone (M x KH*KW*Cin x Cout), same sgemm: what the
    # conv would reach with free im2col
    for r in rows:
        m, k, c = r[-1]
        a = np.full((m, k), 0.5, np.float32)
        b = np.full((k, c), 0.25, np.float32)
        r[-1] = 2.0 * m * k * c / best_time(lambda: _C.sgemm(a, b), args.reps, 1.0) / 1e9
        del a, b
    ref["numpy.matmul 2048^3"] = gemm_rate(np.matmul, 2048, 2048, 2048, 3, rng)

    print(f"glae conv2d bench: batch {args.batch}, {glae.get_num_threads()} threads, "
          f"float32, best of {args.reps}, {'thread CPU time' if args.cpu_time else 'wall time'}; load average at start {load0:.2f}, at end "
          f"{os.getloadavg()[0]:.2f} (other processes on the machine skew every number)")
    for label, r in ref.items():
        print(f"  reference sgemm {label:>22}: {r:7.1f} GFLOP/s")
    print(f"  ratio column = conv GFLOP/s / {sgemm:.1f} (best glae sgemm above)\n")
    hdr = f"{'px':>4} {'layer':<18} {'n':>2} {'input':>16} {'fwd GF/s':>9} {'bwd GF/s':>9} " \
          f"{'fwd ratio':>9} {'bwd ratio':>9} {'fwd ms':>8} {'bwd ms':>8} {'GEMM GF/s':>9}"
    print(hdr)
    print("-" * len(hdr))
    for size, name, count, shp, gf, gb, tf, tb, gg in rows:
        print(f"{size:>4} {name:<18} {count:>2} {shp:>16} {gf:9.1f} {gb:9.1f} {gf / sgemm:9.2f} "
              f"{gb / sgemm:9.2f} {tf * 1e3:8.1f} {tb * 1e3:8.1f} {gg:9.1f}")
    print()
    for size, (ff, tf, fb, tb) in tot.items():
        print(f"{size:>4} whole ResNet-18 convs (weighted by count): fwd {ff / tf / 1e9:6.1f} "
              f"GFLOP/s ({ff / tf / 1e9 / sgemm:.2f} of sgemm, {tf * 1e3:.0f} ms), bwd "
              f"{fb / tb / 1e9:6.1f} GFLOP/s ({fb / tb / 1e9 / sgemm:.2f}, {tb * 1e3:.0f} ms), "
              f"fwd+bwd {(ff + fb) / (tf + tb) / 1e9:6.1f} GFLOP/s "
              f"({(ff + fb) / (tf + tb) / 1e9 / sgemm:.2f})")
    print(f"\npeak RSS {rss:.0f} MB after the convs (includes the bench's own arrays and the "
          f"2048^3 GEMM operands); wall {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
