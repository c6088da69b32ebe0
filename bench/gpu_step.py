"""GPU training-step benchmark (issue 6): images/s and peak GPU memory of one GLAE "fr+pa"
training step (ResNet-18 / ResNet-50 backbone, 224x224, batch 256, bf16), glae against
PyTorch eager (AMP bf16, channels_last, cudnn.benchmark) and torch.compile, with the ratio,
the fraction of the measured bf16 matmul rate, and an end-to-end run fed by a loader.

    python bench/gpu_step.py                      # both backbones, all variants
    python bench/gpu_step.py --arch 18 --steps 10 --no-compile

The PyTorch model is an independent implementation of glae's model (docs/model.md on the
`model` branch, csrc/nn/head.c): torchvision-topology ResNet without avgpool/fc, Feature
Rearrangement = PixelShuffle(16) + Conv2d(C/256 -> 101, k=16, s=16) giving a 7x7 map; local
branch = per-position softmax with KL + lambda*L1 of the expectation against the image's
Gaussian label distribution, averaged over positions (GLAE eq. 6-7); holistic branch =
the map flattened in NCHW order -> Linear(101*49 -> 512) -> Linear(512 -> 101), KL +
lambda*L1 (eq. 8-9); loss = L_loc + L_hol (eq. 10); SGD momentum 0.9 Nesterov, wd 5e-4.

glae: the whole-model GPU step runs with float32 activations (fp32 and tf32 rows, the
batch copied from pageable memory each step); the bf16 and loader rows print "not
available in this build" until bf16 activations exist (docs/cuda.md).
"""
import argparse
import os
import sys
import time

K = 101  # ages 0..100


def glae_status():
    """What the installed glae offers on the GPU."""
    try:
        try:
            from glae import _C
        except ImportError:  # run from a source tree built in place
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            from glae import _C
    except Exception as e:  # noqa: BLE001 - report, do not fail the PyTorch side
        return None, f"glae not importable: {e}"
    if not _C.HAS_CUDA:
        return _C, "glae built without CUDA"
    if not _C.cuda_devices():
        return _C, "no CUDA device visible to glae"
    if getattr(_C, "Model", None) is None:
        return _C, "no glae Model in this build"
    return _C, None


def bench_glae(_C, arch, batch, size, steps, warmup, math):
    """glae's whole-model step on the GPU (float32 activations; math fp32 or tf32): the
    batch is copied from pageable host memory each step, as train_step does today."""
    import numpy as np

    m = _C.Model(f"resnet{arch}", "fr+pa", input_size=size, device="cuda", math=math)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    y = rng.uniform(0, 100, batch).astype(np.float32)
    head_end = m.group_range("head")[1]

    def step(first):
        m.zero_grad()
        m.train_step(x, y, stage=1)  # returns after the loss copy: the step has finished
        m.sgd_step(0.1, 0.9, 0.0, 5e-4, True, first, 0, head_end)

    for i in range(warmup):
        step(i == 0)
    t = time.perf_counter()
    for _ in range(steps):
        step(False)
    m.get("conv1.weight")  # waits for the last SGD step
    dt = time.perf_counter() - t
    n = m.group_range("balanced")[1]  # the balanced head is registered last: n floats
    return {"ips": batch * steps / dt, "mem": m.arena_bytes + 3 * 4 * n, "step_s": dt / steps}


# ---- the PyTorch reference model ---------------------------------------------------------

def build_torch_model(torch, arch, proj_width=512, r=16, k=16, s=16, size=224):
    nn = torch.nn

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, c, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.down = None
            if stride != 1 or cin != c:
                self.down = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + idt)

    class Bottleneck(nn.Module):  # v1.5: the stride on the 3x3
        expansion = 4

        def __init__(self, cin, c, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.conv3 = nn.Conv2d(c, 4 * c, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(4 * c)
            self.down = None
            if stride != 1 or cin != 4 * c:
                self.down = nn.Sequential(nn.Conv2d(cin, 4 * c, 1, stride, bias=False),
                                          nn.BatchNorm2d(4 * c))

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            return torch.relu(self.bn3(self.conv3(y)) + idt)

    block, layers = (Basic, [2, 2, 2, 2]) if arch == 18 else (Bottleneck, [3, 4, 6, 3])

    class GLAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            blocks, cin = [], 64
            for i, n in enumerate(layers):
                c = 64 * 2 ** i
                for j in range(n):
                    blocks.append(block(cin, c, 2 if (i > 0 and j == 0) else 1))
                    cin = c * block.expansion
            self.body = nn.Sequential(*blocks)
            feat = size // 32
            self.shuffle = nn.PixelShuffle(r)  # GLAE III-B
            self.fr = nn.Conv2d(cin // (r * r), K, k, s)
            hp = (feat * r - k) // s + 1
            self.hw = hp * hp
            self.proj = nn.Linear(K * self.hw, proj_width)  # eq. 8, proj_depth 0
            self.cls = nn.Linear(proj_width, K)  # eq. 9

        def forward(self, x):
            m = self.fr(self.shuffle(self.body(self.stem(x))))  # (N, K, H', W')
            return m, self.cls(self.proj(m.flatten(1)))

    return GLAE()


def ldl_loss(torch, logits, z, y, lam=1.0):
    """mean over rows of KL(z || softmax) + lam * |y - E[k]| (LAE eq. 1-3, GLAE eq. 2-5), fp32"""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=1)
    zlogz = torch.where(z > 0, z * torch.log(z.clamp_min(1e-38)), torch.zeros_like(z)).sum(1)
    kl = zlogz - (z * logp).sum(1)
    ages = torch.arange(K, device=logits.device, dtype=torch.float32)
    yhat = (logp.exp() * ages).sum(1)
    return (kl + lam * (y - yhat).abs()).mean()


def glae_loss(torch, fmap, hol, z, y):
    n, k, hh, ww = fmap.shape
    loc = fmap.permute(0, 2, 3, 1).reshape(n * hh * ww, k)  # every position carries the label
    zr = z.repeat_interleave(hh * ww, 0)
    yr = y.repeat_interleave(hh * ww, 0)
    return ldl_loss(torch, loc, zr, yr) + ldl_loss(torch, hol, z, y)  # eq. 10


def label_dist(torch, y, sigma=1.0):
    k = torch.arange(K, device=y.device, dtype=torch.float32)
    z = torch.exp(-((k[None] - y[:, None]) ** 2) / (2 * sigma * sigma))
    return z / z.sum(1, keepdim=True)


# ---- timing ------------------------------------------------------------------------------

def matmul_rate(torch, n=8192, reps=20):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def step_flops(torch, model, x, z, y):
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    with FlopCounterMode(display=False) as fc:
        with torch.autocast("cuda", torch.bfloat16):
            m, h = model(x)
        glae_loss(torch, m, h, z, y).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def bench_torch(torch, arch, batch, size, steps, warmup, compiled, loader_workers):
    torch.manual_seed(0)
    model = build_torch_model(torch, arch, size=size).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    fwd = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last)
    y = torch.rand(batch, device="cuda") * 100
    z = label_dist(torch, y)

    def step(xb, yb, zb):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16):
            m, h = fwd(xb)
        loss = glae_loss(torch, m, h, zb, yb)
        loss.backward()
        opt.step()
        return loss

    flops = step_flops(torch, model, x, z, y)
    for _ in range(warmup):
        step(x, y, z)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step(x, y, z)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    res = {"ips": batch * steps / dt, "peak": torch.cuda.max_memory_allocated(), "flops": flops,
           "step_s": dt / steps}

    if loader_workers is not None:  # end to end: uint8 NHWC host images -> pinned -> GPU
        n_img = batch * (steps + warmup)
        data = torch.randint(0, 256, (n_img, size, size, 3), dtype=torch.uint8)
        ages = torch.rand(n_img) * 100
        ds = torch.utils.data.TensorDataset(data, ages)
        dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=loader_workers, pin_memory=True,
                                         persistent_workers=loader_workers > 0)
        mean = torch.tensor([0.485, 0.456, 0.406], device="cuda").view(1, 3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225], device="cuda").view(1, 3, 1, 1) * 255
        it, done = iter(dl), 0
        torch.cuda.synchronize()
        for i, (xb, yb) in enumerate(it):
            if i == warmup:
                torch.cuda.synchronize()
                t = time.perf_counter()
            xb = xb.cuda(non_blocking=True).permute(0, 3, 1, 2).float()
            xb = torch.where(torch.rand(batch, 1, 1, 1, device="cuda") < 0.5, xb, xb.flip(3))
            xb = ((xb - mean) / std).contiguous(memory_format=torch.channels_last)
            yb = yb.cuda(non_blocking=True)
            step(xb, yb, label_dist(torch, yb))
            done += i >= warmup
        torch.cuda.synchronize()
        res["e2e_ips"] = batch * done / (time.perf_counter() - t) if done else float("nan")
    del model, opt, fwd
    torch.cuda.empty_cache()
    return res


def fmt_mem(b):
    return f"{b / 2**30:.2f} GiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[18, 50], choices=[18, 50])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--workers", type=int, default=8, help="loader workers for the end-to-end run")
    ap.add_argument("--no-loader", action="store_true", help="skip the end-to-end run")
    a = ap.parse_args()

    glae_C, why = glae_status()
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: nothing to compare with")
        print(f"glae: {why}")
        return 1
    if not torch.cuda.is_available():
        print("no CUDA device visible to PyTorch")
        return 1
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"batch {a.batch}  {a.size}x{a.size}  bf16  steps {a.steps} (+{a.warmup} warm-up)")
    rate = matmul_rate(torch)
    print(f"measured bf16 matmul rate: {rate / 1e12:.1f} TFLOP/s (8192^3)")
    hdr = f"{'model':<10}{'variant':<26}{'images/s':>10}{'peak mem':>12}{'x eager':>9}{'of matmul':>11}"
    print(hdr)
    print("-" * len(hdr))
    for arch in a.arch:
        name = f"R{arch} fr+pa"
        eager = bench_torch(torch, arch, a.batch, a.size, a.steps, a.warmup, False,
                            None if a.no_loader else a.workers)
        rows = [("torch eager AMP", eager)]
        if not a.no_compile:
            try:
                rows.append(("torch.compile AMP", bench_torch(torch, arch, a.batch, a.size, a.steps,
                                                             a.warmup, True, None)))
            except Exception as e:  # noqa: BLE001 - compile support varies by install
                print(f"{name:<10}{'torch.compile AMP':<26}failed: {type(e).__name__}: {e}")
        for label, r in rows:
            frac = (r["flops"] / r["step_s"] / rate) if r["flops"] else float("nan")
            print(f"{name:<10}{label:<26}{r['ips']:>10.0f}{fmt_mem(r['peak']):>12}"
                  f"{r['ips'] / eager['ips']:>9.2f}{frac:>10.0%} ")
        if "e2e_ips" in eager:
            print(f"{name:<10}{'torch eager + loader':<26}{eager['e2e_ips']:>10.0f}"
                  f"{'':>12}{eager['e2e_ips'] / eager['ips']:>9.2f}")
        if eager["flops"]:
            print(f"{name:<10}{'(step GFLOP, fwd+bwd)':<26}{eager['flops'] / 1e9:>10.0f}")
        for math in ("fp32", "tf32"):
            label = f"glae {math} step"
            if why:
                print(f"{name:<10}{label:<26}{'not available in this build':>30}  ({why})")
                continue
            try:
                g = bench_glae(glae_C, arch, a.batch, a.size, a.steps, a.warmup, math)
            except Exception as e:  # noqa: BLE001 - report and go on with the table
                print(f"{name:<10}{label:<26}failed: {type(e).__name__}: {e}")
                continue
            print(f"{name:<10}{label:<26}{g['ips']:>10.0f}{fmt_mem(g['mem']):>12}"
                  f"{g['ips'] / eager['ips']:>9.2f}   (arena + params/grads/momentum)")
        for label in ("glae bf16 step", "glae + loader"):
            print(f"{name:<10}{label:<26}{'not available in this build':>30}  "
                  f"({why or 'bf16 activations beyond conv are not written'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
