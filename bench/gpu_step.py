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

glae: the whole-model GPU step in three maths: fp32 and tf32 (float32 activations) and
bf16 (mixed precision: bf16 backbone activations, fused BN+add+ReLU, float32 head and
master weights; the issue's row); each step as the Trainer runs it: train_step_async (the
uint8 pixel batch through pinned memory on the copy stream, double-buffered, normalised on
the GPU) and the previous step's losses read while this one runs.

glae with its own data pipeline: synthetic faces at the benchmark size (2x the batch by
default, --pack-n) are written once with write_packed to a temporary folder and opened as a
memory-mapped PackedDataset; the C Loader (as glae.train builds it: crop 0.8-1 + flip 0.5
+ colour jitter 0.4/0.4/0.4/0.1, uint8 batches normalised on the GPU (GLAE normalisation),
RandAugment only with --randaugment,
--loader-threads workers, default all cores) then gives two rows per backbone:
"glae loader alone" (images/s the Loader delivers with nothing consuming them, timed from
its construction over whole waves of batches, one batch per worker) and "glae <math> +
loader" (Loader batch -> device model train_step + SGD step, --steps steps, timed from the
Loader's construction so its start is included), with a line saying whether data loading
is the bottleneck (loader rate against the compute-only rate of the same math).

    python bench/gpu_step.py --dry-run-cpu        # no GPU: glae rows only, CPU model, tiny size

EfficientNetV2 (--effnet, default efficientnet_v2_m; LAE's backbone): the same fr+pa head
on torchvision's efficientnet_v2_* trunk (features, 1280 channels: FR r=16 -> 5 channels),
PyTorch eager with AMP bf16 and channels_last against glae in tf32 and fp32 (glae has no
bf16 path for this backbone yet), in the same run. --arch none leaves the ResNet rows out.
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


def backbone_name(arch):
    """18, 50 -> resnet18, resnet50; EfficientNetV2 names as they are."""
    return f"resnet{arch}" if isinstance(arch, int) else arch


def row_name(arch):
    return f"R{arch} fr+pa" if isinstance(arch, int) else arch.replace("efficientnet_", "E")


def glae_model(_C, arch, size, math, device="cuda"):
    m = _C.Model(backbone_name(arch), "fr+pa", input_size=size, device=device, math=math)
    if device != "cpu":
        m.cudnn_benchmark(True)  # as the PyTorch rows (cudnn.benchmark = True)
    return m


def glae_step(m, x, y, sigma, first):
    """One stage-1 step as glae.train's Trainer does it: zero_grad, train_step_async (the
    uint8 batch through a pinned slot on the copy stream, normalised on the GPU, nothing
    waited for), SGD over backbone + head, then the losses of the step before (which has
    finished, or nearly, while this one runs)."""
    m.zero_grad()
    m.train_step_async(x, y, sigma, stage=1, norm="glae")
    m.sgd_step(0.1, 0.9, 0.0, 5e-4, True, first, 0, m.group_range("head")[1])
    if not first:
        m.async_losses(1)


def glae_mem(m):
    n = m.group_range("balanced")[1]  # the balanced head is registered last: n floats
    return m.arena_bytes + 3 * 4 * n  # arena + params/grads/momentum


def bench_glae(_C, arch, batch, size, steps, warmup, math, device="cuda", graph=False):
    """glae's whole-model step on the GPU (math fp32, tf32 or bf16), pipelined as the
    Trainer runs it (glae_step)."""
    import numpy as np

    m = glae_model(_C, arch, size, math, device)
    if graph:
        m.use_cuda_graph()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)  # pixels, as the Loader's
    y = rng.uniform(0, 100, batch).astype(np.float32)

    for i in range(warmup):
        glae_step(m, x, y, None, i == 0)
    t = time.perf_counter()
    for i in range(steps):
        glae_step(m, x, y, None, warmup == 0 and i == 0)
    m.get(m.param_table()[0][0])  # waits for the last SGD step
    dt = time.perf_counter() - t
    return {"ips": batch * steps / dt, "mem": glae_mem(m), "step_s": dt / steps,
            "graph": m.cuda_graph}


# ---- glae fed by its own loader from a packed file ----------------------------------------

def train_augment(randaugment=False):
    """The papers' training augmentations in the Loader's vocabulary, as Trainer.augment_config
    (glae/train.py) builds them from the default Config: random resized crop (scale 0.8-1),
    flip 0.5, colour jitter, GLAE normalisation (x - 127.5) / 128; RandAugment N=2 M=9 only
    when asked (the Config default has it on; here it is off unless --randaugment)."""
    return {"crop": True, "flip": 0.5, "jitter": True, "randaugment": bool(randaugment),
            "norm": "glae"}


def write_faces(folder, n, size):
    """n synthetic faces at size x size written as a packed file, opened memory-mapped."""
    from glae.data import PackedDataset, synthetic_faces, write_packed

    images, ages = synthetic_faces(n, size, seed=0)
    ds = PackedDataset(write_packed(os.path.join(folder, "faces.glae"), images, ages))
    return ds


def glae_loader(_C, ds, batch, size, batches, threads, aug, epoch):
    """A Loader over `batches` batches: passes over the packed file in fresh permutations
    (a repeated index gets a fresh augmentation), as glae.train's loader() builds it."""
    import numpy as np

    n = len(ds)
    reps = -(-batches * batch // n)
    rng = np.random.default_rng([epoch, 7])
    order = np.concatenate([rng.permutation(n) for _ in range(reps)])[:batches * batch]
    sigmas = np.full(n, 1.0, np.float32)  # Config.sigma where the data has none
    return _C.Loader(ds.images, ds.ages, sigmas, np.ascontiguousarray(order, np.int64), batch,
                     size, seed=1, epoch=epoch, threads=threads, drop_last=True, dtype="uint8",
                     **aug)


def bench_loader(_C, ds, batch, size, steps, threads, aug):
    """images/s the Loader delivers with nothing consuming them (each next() still copies
    the batch out of the ring, as in training). Each worker augments a whole batch, so the
    batches come in waves of `threads`: the run is whole waves, at least 2 and >= steps."""
    waves = max(2, -(-steps // threads))
    nb = waves * threads
    t = time.perf_counter()
    L = glae_loader(_C, ds, batch, size, nb, threads, aug, epoch=100)
    done = 0
    for x, _, _ in L:
        done += len(x)
    dt = time.perf_counter() - t
    L.close()
    return {"ips": done / dt, "batches": nb}


def bench_glae_e2e(_C, ds, arch, batch, size, steps, warmup, math, threads, aug, device="cuda"):
    """Loader batch -> model train_step + SGD step. The model is warmed up on `warmup`
    loader batches of another epoch; the timed run starts with the construction of a fresh
    Loader (its first batch, one worker's whole batch, is part of the time) and ends when
    the last SGD step has finished."""
    m = glae_model(_C, arch, size, math, device)
    if warmup:
        L = glae_loader(_C, ds, batch, size, warmup, threads, aug, epoch=0)
        for i, (x, y, s) in enumerate(L):
            glae_step(m, x, y, s, i == 0)
        L.close()
    t = time.perf_counter()
    L = glae_loader(_C, ds, batch, size, steps, threads, aug, epoch=1)
    done, first = 0, None
    for x, y, s in L:
        if first is None:
            first = time.perf_counter() - t
        glae_step(m, x, y, s, done == 0 and not warmup)
        done += 1
    m.get(m.param_table()[0][0])  # waits for the last SGD step
    dt = time.perf_counter() - t
    L.close()
    return {"ips": batch * done / dt, "mem": glae_mem(m), "first_s": first}


# ---- the PyTorch reference model ---------------------------------------------------------

def build_torch_model(torch, arch, proj_width=512, r=16, k=16, s=16, size=224):
    nn = torch.nn
    if isinstance(arch, str):  # torchvision's EfficientNetV2 trunk + the same head
        import torchvision

        class EffGLAE(nn.Module):
            def __init__(self):
                super().__init__()
                self.features = getattr(torchvision.models, arch)().features
                feat = size // 32
                self.shuffle = nn.PixelShuffle(r)
                self.fr = nn.Conv2d(1280 // (r * r), K, k, s)
                hp = (feat * r - k) // s + 1
                self.proj = nn.Linear(K * hp * hp, proj_width)
                self.cls = nn.Linear(proj_width, K)

            def forward(self, x):
                m = self.fr(self.shuffle(self.features(x)))
                return m, self.cls(self.proj(m.flatten(1)))

        return EffGLAE()

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


HDR = f"{'model':<10}{'variant':<26}{'images/s':>10}{'peak mem':>12}{'x eager':>9}{'of matmul':>11}"


def glae_setup(_C, a):
    """The packed file and the loader-alone rate, shared by every backbone; None when the
    loader rows are off. A failure is reported as a row later, not raised."""
    if a.no_loader:
        return None
    import tempfile

    t = time.perf_counter()
    try:
        tmp = tempfile.TemporaryDirectory(prefix="glae-gpu-step-")
        ds = write_faces(tmp.name, a.pack_n, a.size)
        aug = train_augment(a.randaugment)
        wrote = time.perf_counter() - t
        lr = bench_loader(_C, ds, a.batch, a.size, a.steps, a.loader_threads, aug)
    except Exception as e:  # noqa: BLE001 - report and go on with the table
        return {"error": f"{type(e).__name__}: {e}"}
    mb = os.path.getsize(ds.path) / 2**20
    print(f"glae loader: {len(ds)} synthetic faces {a.size}x{a.size} packed ({mb:.0f} MiB, "
          f"{wrote:.1f} s to write), memory-mapped; crop+flip+jitter"
          f"{'+RandAugment' if a.randaugment else ''}, uint8 batches (normalised by the model), "
          f"{a.loader_threads} threads")
    return {"tmp": tmp, "ds": ds, "aug": aug, "loader": lr}


def glae_rows(_C, why, a, name, arch, device, maths, eager_ips, setup):
    """The glae rows of one backbone: compute-only step per math, then (setup given) the
    loader alone, the loader-fed step and the bottleneck verdict."""
    def ratio(ips):
        return f"{ips / eager_ips:>9.2f}" if eager_ips else f"{'':>9}"

    compute = {}
    for variant in maths:
        math, graph = variant.split("+")[0], variant.endswith("+graph")
        label = f"glae {math} {'graph ' if graph else ''}step"
        if why:
            print(f"{name:<10}{label:<26}{'not available in this build':>30}  ({why})")
            continue
        try:
            g = bench_glae(_C, arch, a.batch, a.size, a.steps, a.warmup, math, device, graph)
        except Exception as e:  # noqa: BLE001 - report and go on with the table
            print(f"{name:<10}{label:<26}failed: {type(e).__name__}: {e}")
            continue
        if not graph:
            compute[math] = g["ips"]
        note = f"CUDA graph {g['graph']}" if graph else "arena + params/grads/momentum"
        print(f"{name:<10}{label:<26}{g['ips']:>10.0f}{fmt_mem(g['mem']):>12}"
              f"{ratio(g['ips'])}   ({note})")
    if setup is None:
        return
    math = a.e2e_math
    label = f"glae {math} + loader"
    if why or "error" in setup:
        reason = why or setup["error"]
        for lab in ("glae loader alone", label):
            print(f"{name:<10}{lab:<26}{'not available':>30}  ({reason})")
        return
    lr = setup["loader"]["ips"]
    print(f"{name:<10}{'glae loader alone':<26}{lr:>10.0f}{'':>12}{'':>9}{'':>11}  "
          f"({a.loader_threads} threads, {setup['loader']['batches']} batches)")
    try:
        e = bench_glae_e2e(_C, setup["ds"], arch, a.batch, a.size, a.steps, a.warmup, math,
                           a.loader_threads, setup["aug"], device)
    except Exception as ex:  # noqa: BLE001 - report and go on with the table
        print(f"{name:<10}{label:<26}failed: {type(ex).__name__}: {ex}")
        return
    c = compute.get(math)
    of_c = f", {e['ips'] / c:.0%} of compute-only" if c else ""
    print(f"{name:<10}{label:<26}{e['ips']:>10.0f}{fmt_mem(e['mem']):>12}{ratio(e['ips'])}"
          f"{'':>11}  (first batch after {e['first_s'] * 1e3:.0f} ms, counted{of_c})")
    if c:
        verdict = "IS the bottleneck" if lr < c else "is not the bottleneck"
        print(f"{name:<10}-> data loading {verdict}: loader {lr:.0f} img/s vs glae {math} "
              f"compute {c:.0f} img/s ({lr / c:.2f}x)")
    else:
        print(f"{name:<10}-> no glae {math} compute-only rate to compare the loader with")


def dry_run_cpu(a):
    """No GPU, no PyTorch: the glae rows with a CPU model at a tiny size."""
    glae_C, why = glae_status()
    if glae_C is None:
        print(f"glae: {why}")
        return 1
    if getattr(glae_C, "Model", None) is None:
        print("glae: no Model in this build")
        return 1
    print(f"dry run on the CPU: batch {a.batch}  {a.size}x{a.size}  fp32  steps {a.steps} "
          f"(+{a.warmup} warm-up); no PyTorch rows")
    setup = glae_setup(glae_C, a)
    print(HDR)
    print("-" * len(HDR))
    for arch in a.arch:
        glae_rows(glae_C, None, a, f"R{arch} fr+pa", arch, "cpu", ("fp32", "bf16"), None, setup)
    for arch in a.effnet:
        glae_rows(glae_C, None, a, row_name(arch), arch, "cpu", ("fp32",), None, None)
    if setup and "tmp" in setup:
        setup["tmp"].cleanup()
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=None, choices=["18", "50", "none"],
                    help="ResNet backbones (default 18 50; 18 with --dry-run-cpu; none: no "
                         "ResNet rows)")
    ap.add_argument("--effnet", nargs="*", default=["efficientnet_v2_m"],
                    choices=["efficientnet_v2_s", "efficientnet_v2_m"],
                    help="EfficientNetV2 backbones, after the ResNet rows (none: --effnet)")
    ap.add_argument("--batch", type=int, default=None, help="default 256 (4 with --dry-run-cpu)")
    ap.add_argument("--size", type=int, default=None, help="default 224 (64 with --dry-run-cpu)")
    ap.add_argument("--steps", type=int, default=None, help="default 20 (2 with --dry-run-cpu)")
    ap.add_argument("--warmup", type=int, default=None, help="default 5 (1 with --dry-run-cpu)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--compile-arch", type=int, nargs="+", default=None, choices=[18, 50],
                    help="the backbones with a torch.compile row (default: all of --arch; the "
                         "issue compares it for ResNet-18)")
    ap.add_argument("--workers", type=int, default=8, help="loader workers for the end-to-end run")
    ap.add_argument("--no-loader", action="store_true",
                    help="skip the end-to-end runs (PyTorch and glae loader rows)")
    ap.add_argument("--loader-threads", type=int, default=None,
                    help="glae Loader threads (default: all cores, os.cpu_count())")
    ap.add_argument("--randaugment", action="store_true",
                    help="glae Loader with RandAugment N=2 M=9 too (off by default)")
    ap.add_argument("--pack-n", type=int, default=None,
                    help="synthetic faces in the packed file (default 2x the batch)")
    ap.add_argument("--maths", nargs="+", default=["bf16", "bf16+graph", "tf32", "fp32"],
                    choices=["bf16", "bf16+graph", "tf32", "fp32", "tf32+graph", "fp32+graph"],
                    help="glae compute-only rows, in this order (the issue's bf16 rows first, "
                         "so a time limit cuts the extra ones)")
    ap.add_argument("--e2e-math", choices=["fp32", "tf32", "bf16"], default=None,
                    help="math of the loader-fed glae step (default bf16; fp32 on the CPU)")
    ap.add_argument("--dry-run-cpu", action="store_true",
                    help="no GPU needed: glae compute, loader and loader-fed rows with a CPU "
                         "model at a tiny size, to check the code path")
    a = ap.parse_args()
    if a.arch is not None:
        a.arch = [int(x) for x in a.arch if x != "none"]
    dry = a.dry_run_cpu
    for k, gpu, cpu in (("arch", [18, 50], [18]), ("batch", 256, 4), ("size", 224, 64),
                        ("steps", 20, 2), ("warmup", 5, 1), ("e2e_math", "bf16", "fp32")):
        if getattr(a, k) is None:
            setattr(a, k, cpu if dry else gpu)
    if a.loader_threads is None:
        a.loader_threads = min(os.cpu_count() or 1, 256)
    if a.pack_n is None:
        a.pack_n = 2 * a.batch
    if dry:
        return dry_run_cpu(a)

    glae_C, why = glae_status()
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: nothing to compare with")
        print(f"glae: {why}")
        print("(--dry-run-cpu runs the glae rows on the CPU at a tiny size)")
        return 1
    if not torch.cuda.is_available():
        print("no CUDA device visible to PyTorch")
        print("(--dry-run-cpu runs the glae rows on the CPU at a tiny size)")
        return 1
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"batch {a.batch}  {a.size}x{a.size}  bf16  steps {a.steps} (+{a.warmup} warm-up)")
    rate = matmul_rate(torch)
    print(f"measured bf16 matmul rate: {rate / 1e12:.1f} TFLOP/s (8192^3)")
    # the packed file and the loader-alone rate once, before the table (shared by both
    # backbones); with glae unusable the loader rows say why
    setup = glae_setup(glae_C, a) if not why else (None if a.no_loader else {"error": why})
    print(HDR)
    print("-" * len(HDR))
    eager = {}

    def show(arch, label, r):
        frac = (r["flops"] / r["step_s"] / rate) if r["flops"] else float("nan")
        print(f"{row_name(arch):<10}{label:<26}{r['ips']:>10.0f}{fmt_mem(r['peak']):>12}"
              f"{r['ips'] / eager[arch]['ips']:>9.2f}{frac:>10.0%} ")

    for arch in a.arch:
        name = f"R{arch} fr+pa"
        e = eager[arch] = bench_torch(torch, arch, a.batch, a.size, a.steps, a.warmup, False,
                                      None if a.no_loader else a.workers)
        show(arch, "torch eager AMP", e)
        if "e2e_ips" in e:
            print(f"{name:<10}{'torch eager + loader':<26}{e['e2e_ips']:>10.0f}"
                  f"{'':>12}{e['e2e_ips'] / e['ips']:>9.2f}")
        if e["flops"]:
            print(f"{name:<10}{'(step GFLOP, fwd+bwd)':<26}{e['flops'] / 1e9:>10.0f}")
        glae_rows(glae_C, why, a, name, arch, "cuda", a.maths, e["ips"], setup)
    for arch in a.effnet:  # glae: float32 activations (tf32 / fp32), no loader rows
        name = row_name(arch)
        try:
            e = eager[arch] = bench_torch(torch, arch, a.batch, a.size, a.steps, a.warmup,
                                          False, None)
        except Exception as ex:  # noqa: BLE001 - report and go on with the table
            print(f"{name:<10}{'torch eager AMP':<26}failed: {type(ex).__name__}: {ex}")
            continue
        show(arch, "torch eager AMP", e)
        if e["flops"]:
            print(f"{name:<10}{'(step GFLOP, fwd+bwd)':<26}{e['flops'] / 1e9:>10.0f}")
        maths = [m for m in a.maths if m.split("+")[0] != "bf16" and not m.endswith("+graph")]
        glae_rows(glae_C, why, a, name, arch, "cuda", maths or ["tf32"], e["ips"], None)
    # torch.compile last, for every backbone: its compilation may take minutes of a timed
    # session, and a time limit should cut it rather than the other backbone's rows
    for arch in a.arch:
        if a.no_compile or (a.compile_arch is not None and arch not in a.compile_arch):
            continue
        try:
            show(arch, "torch.compile AMP", bench_torch(torch, arch, a.batch, a.size, a.steps,
                                                         a.warmup, True, None))
        except Exception as ex:  # noqa: BLE001 - compile support varies by install
            print(f"{'R%d fr+pa' % arch:<10}{'torch.compile AMP':<26}failed: "
                  f"{type(ex).__name__}: {ex}")
    if setup and "tmp" in setup:
        setup["tmp"].cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
