"""Depthwise convolution (EfficientNetV2's MBConv 3x3 layers) against its peers, in one run.

    python bench/dwconv.py                 # batch 16 at 112 and 224 px
    python bench/dwconv.py --sizes 224 --reps 5

For each depthwise shape of EfficientNetV2-S's MBConv stages (torchvision's table: stage 4
expands 128 -> 512 channels at stride 2, stage 5 160 -> 960, stage 6 256 -> 1536) it times
glae's dwconv2d forward and backward (dx + dw) and, in the same run, the peers:

- torch.nn.functional.conv2d(groups=C) when PyTorch is importable (channels_last, the same
  threads), the implementation nobody here wrote;
- glae's dense conv2d (im2col + GEMM) on the equivalent block-diagonal weight, i.e. what
  the depthwise layer would cost without a kernel of its own (skipped above 512 channels,
  where the dense weight stops being a fair stand-in).

Times are the best of --reps runs, wall clock; a busy machine skews all of them alike."""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import glae  # noqa: E402
from glae import _C  # noqa: E402

try:
    import torch
except ImportError:  # the peer is optional; the table says so
    torch = None


def shapes(size):
    """(name, C, H of the input, stride) of EfficientNetV2-S's depthwise 3x3 layers"""
    h4 = size // 8  # stem /2, stages 2 and 3 /2 each
    return [("s4 first 512/2", 512, h4, 2), ("s4 512", 768, h4 // 2, 1),
            ("s5 960", 960, h4 // 2, 1), ("s6 first 960/2", 960, h4 // 2, 2),
            ("s6 1536", 1536, h4 // 4, 1)]


def best(fn, reps):
    out = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    nt = glae.get_num_threads()
    if torch is not None:
        torch.set_num_threads(nt)
    print(f"depthwise 3x3 conv, batch {args.batch}, {nt} threads, float32, best of {args.reps}; "
          f"PyTorch: {torch.__version__ if torch else 'not installed'}")
    hdr = (f"{'px':>4} {'layer':<16} {'input':>16} {'glae fwd ms':>11} {'glae bwd ms':>11} "
           f"{'torch fwd':>9} {'torch bwd':>9} {'im2col fwd':>10} {'im2col bwd':>10}")
    print(hdr)
    print("-" * len(hdr))
    for size in args.sizes:
        for name, c, h, s in shapes(size):
            x = rng.standard_normal((args.batch, h, h, c)).astype(np.float32)
            w = (rng.standard_normal((c, 3, 3, 1)) * 0.1).astype(np.float32)
            y = _C.dwconv2d_forward(x, w, None, s, 1)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            gf = best(lambda: _C.dwconv2d_forward(x, w, None, s, 1), args.reps)
            gb = best(lambda: _C.dwconv2d_backward(dy, x, w, s, 1, False), args.reps)
            tf = tb = df = db = float("nan")
            if torch is not None:
                tx = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
                tw = torch.from_numpy(w).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
                tdy = torch.from_numpy(dy).permute(0, 3, 1, 2)
                conv = lambda: torch.nn.functional.conv2d(tx, tw, None, s, 1, 1, c)
                tf = best(lambda: conv().detach(), args.reps)
                tb = best(lambda: torch.autograd.grad(conv(), (tx, tw), tdy), args.reps) - tf
            if c <= 512:
                dense = np.zeros((c, 3, 3, c), np.float32)
                dense[np.arange(c), :, :, np.arange(c)] = w[:, :, :, 0]
                df = best(lambda: _C.conv2d_forward(x, dense, None, s, 1), args.reps)
                db = best(lambda: _C.conv2d_backward(dy, x, dense, s, 1, False), args.reps)
            ms = lambda t: f"{t * 1e3:.1f}" if np.isfinite(t) else "-"
            print(f"{size:>4} {name:<16} {f'{args.batch}x{h}x{h}x{c}':>16} {ms(gf):>11} {ms(gb):>11} "
                  f"{ms(tf):>9} {ms(tb):>9} {ms(df):>10} {ms(db):>10}")


if __name__ == "__main__":
    main()
