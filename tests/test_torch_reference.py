"""The whole network against PyTorch/torchvision (an implementation nobody here wrote):
same weights and inputs, then the loss, every parameter gradient, the BN running
statistics after a training step and the eval-mode distributions must agree.
Skipped where torch/torchvision are not installed (they are not test dependencies)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import glae  # noqa: E402
from glae import _C  # noqa: E402

F = torch.nn.functional


def internal_to_torch(arr, shape):
    """A flat slice of the model's buffer -> torchvision layout (conv OHWI -> OIHW)."""
    if len(shape) == 4:
        o, i, h, w = shape
        return arr.reshape(o, h, w, i).transpose(0, 3, 1, 2)
    return arr.reshape(shape)


def ldl_loss_torch(logits, ages, lam=1.0):
    """GLAE eq. 5 written independently: KL(z || softmax) + lam * |y - E[k]|, batch mean,
    z the normalised Gaussian (sigma 1) around each age."""
    k = torch.arange(logits.shape[1], dtype=torch.float64)
    z = torch.exp(-(k[None] - ages[:, None]) ** 2 / 2)
    z = z / z.sum(1, keepdim=True)
    logp = F.log_softmax(logits.double(), dim=1)
    kl = (z * (torch.log(z.clamp_min(1e-300)) - logp)).sum(1)
    expect = (logp.exp() * k).sum(1)
    return (kl + lam * (ages - expect).abs()).mean()


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    m = _C.Model("resnet18", "gap", input_size=64, seed=3)
    net = torchvision.models.resnet18(num_classes=101)
    sd = {k: torch.from_numpy(m.get(k).copy()) for k, *_ in m.param_table()
          if not k.startswith("balanced.")}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    # The reference is torch in float64. At this size float32 gradients are ill-conditioned
    # (16 values per channel in layer4's BN; near-ties in the stem's max pool): torch's own
    # float32 gradients differ from its float64 ones by up to 1e-1 relative. Ours must be
    # at least as close to float64 as torch's float32 implementation is.
    net32 = copy.deepcopy(net)
    return m, net.double(), net32


def torch_grads(net, x, ages, dtype, order=None):
    order = np.arange(len(x)) if order is None else order
    net.train()
    net.zero_grad()
    logits = net(torch.from_numpy(x[order].transpose(0, 3, 1, 2).copy()).to(dtype))
    loss = ldl_loss_torch(logits, torch.from_numpy(ages[order]).double())
    loss.backward()
    return loss.item(), {k: p.grad.double().numpy() for k, p in net.named_parameters()}


def compare_with_torch(m, net, ref64, ref32, zero_grad=()):
    """Our running statistics against net's buffers, and every trainable tensor's gradient
    against torch float64 (ref64): ours must be about as close as a correct float32
    implementation is. ref32: torch float32's gradients, one dict or a list of them from the
    same batch in other orders (a permutation changes nothing but the order of the float32
    sums); the yardstick is the largest of their errors, so it measures float32 rounding on
    this problem and not one torch version's summation order. zero_grad: tensors whose exact
    gradient is 0 (checked to be noise-sized instead).
    Returns {name: (our relative L2 error, float32's)}."""
    refs32 = ref32 if isinstance(ref32, (list, tuple)) else [ref32]
    worst = {}
    buffers = dict(net.named_buffers())
    for name, shape, offset, numel, is_buffer, group, _ in m.param_table():
        if name.startswith("balanced."):
            continue
        if is_buffer:  # running statistics after one training-mode forward
            got = m.buffers[offset:offset + numel].reshape(shape)
            np.testing.assert_allclose(got, buffers[name].numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=name)
            continue
        ref = ref64[name]
        got = internal_to_torch(m.grads[offset:offset + numel], shape)
        if name in zero_grad:
            assert np.abs(ref).max() < 1e-12 and np.abs(got).max() < 1e-5, (name, np.abs(got).max())
            continue
        # relative L2 error per tensor: a handful of elements whose ReLU / max-pool choice
        # flips between float32 and float64 forwards would dominate a max-abs measure
        scale = max(np.linalg.norm(ref), 1e-12)
        e32 = max(np.linalg.norm(r[name] - ref) for r in refs32) / scale
        worst[name] = (np.linalg.norm(got - ref) / scale, e32)
    # Two float32 implementations summing in different orders differ by a few times either
    # one's error (observed: up to 2x between torch 1.13 and 2.x on one BN bias), so the
    # bound is 4x the worst of the float32 orders, with a floor of 1e-5 for tensors that
    # float32 happens to get almost exactly.
    bad = {k: v for k, v in worst.items() if v[0] > max(4 * v[1], 1e-5)}
    assert not bad, f"gradients further from float64 than float32 rounding explains: {bad}"
    k = max(worst, key=lambda n: worst[n][0])
    print("worst relative L2 error, ours vs torch float32:",
          max(v[0] for v in worst.values()), max(v[1] for v in worst.values()), "at", k, worst[k])
    return worst


def permuted_float32_grads(grads_of, n):
    """grads_of(order) for the batch in three orders (a list for compare_with_torch)."""
    ident = np.arange(n)
    return [grads_of(o) for o in (ident, ident[::-1], np.roll(ident, 1))]


def test_training_step_matches_torchvision(pair):
    m, net, net32 = pair
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
    ages = np.array([3.0, 25.0, 47.5, 80.0], np.float32)
    m.zero_grad()
    ours = m.train_step(x, ages, None, stage=1, loss="base")
    loss, ref64 = torch_grads(net, x, ages, torch.float64)
    ref32 = permuted_float32_grads(
        lambda o: torch_grads(copy.deepcopy(net32), x, ages, torch.float32, o)[1], len(x))
    assert ours["total"] == pytest.approx(loss, rel=1e-5)
    worst = compare_with_torch(m, net, ref64, ref32)
    assert len(worst) == 62  # every trainable tensor of ResNet-18 + fc was compared


def test_eval_distribution_matches_torchvision(pair):
    m, net, _ = pair
    x = np.random.default_rng(1).standard_normal((3, 64, 64, 3)).astype(np.float32)
    ours = m.forward(x)["vanilla"]
    net.eval()
    with torch.no_grad():
        ref = F.softmax(net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double()), dim=1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-5)


# -- the GLAE head ("fr+pa") against an independent PyTorch module ------------------------
class FRPATorch(torch.nn.Module):
    """GLAE III-B/C written with torch.nn: torchvision's ResNet-18 trunk, PixelShuffle(r)
    + Conv2d(C/r^2 -> K, k, stride s) (Feature Rearrangement), the local branch on the FR
    map, and the holistic branch: flatten (NCHW) -> proj (Linear [+ BN1d, ReLU, Linear]
    per depth) -> cls. Attribute names give glae's parameter names."""

    def __init__(self, r, k, s, K, hw, width, depth):
        super().__init__()
        net = torchvision.models.resnet18()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.shuffle = torch.nn.PixelShuffle(r)
        self.fr = torch.nn.Conv2d(512 // (r * r), K, k, stride=s)
        layers = [torch.nn.Linear(K * hw, width)]
        for _ in range(depth):
            layers += [torch.nn.BatchNorm1d(width), torch.nn.ReLU(), torch.nn.Linear(width, width)]
        self.proj = torch.nn.Sequential(*layers)
        self.cls = torch.nn.Linear(width, K)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        fmap = self.fr(self.shuffle(f))                      # (N, K, H', W')
        return fmap, self.cls(self.proj(fmap.flatten(1)))   # local map, holistic logits


def frpa_losses_torch(fmap, logits, ages):
    """GLAE eq. 6-10: the local loss averaged over the H'W' positions and the batch, the
    holistic loss over the batch, and their sum."""
    n, K, h, w = fmap.shape
    local = fmap.permute(0, 2, 3, 1).reshape(n * h * w, K)
    l_loc = ldl_loss_torch(local, ages.repeat_interleave(h * w))
    l_hol = ldl_loss_torch(logits, ages)
    return l_loc + l_hol, l_loc, l_hol


@pytest.fixture(scope="module")
def frpa_pair():
    torch.manual_seed(0)
    cfg = dict(r=4, k=4, s=4, proj_depth=1, proj_width=32)
    m = _C.Model("resnet18", "fr+pa", input_size=64, seed=5, **cfg)
    net = FRPATorch(4, 4, 4, 101, 2 * 2, 32, 1)
    sd = {k: torch.from_numpy(m.get(k).copy()) for k, *_ in m.param_table()
          if not k.startswith("balanced.")}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return m, net.double(), copy.deepcopy(net).float()


def test_frpa_training_step_matches_torch(frpa_pair):
    m, net, net32 = frpa_pair
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
    ages = np.array([6.0, 31.0, 52.5, 77.0], np.float32)
    m.zero_grad()
    ours = m.train_step(x, ages, None, stage=1, loss="base")

    def grads(model, dtype, order=np.arange(len(x))):
        model.train()
        model.zero_grad()
        fmap, logits = model(torch.from_numpy(x[order].transpose(0, 3, 1, 2).copy()).to(dtype))
        total, l_loc, l_hol = frpa_losses_torch(fmap, logits,
                                                torch.from_numpy(ages[order]).double())
        total.backward()
        return ([v.item() for v in (total, l_loc, l_hol)],
                {k: p.grad.double().numpy() for k, p in model.named_parameters()})

    losses, ref64 = grads(net, torch.float64)
    ref32 = permuted_float32_grads(
        lambda o: grads(copy.deepcopy(net32), torch.float32, o)[1], len(x))
    assert ours["total"] == pytest.approx(losses[0], rel=1e-5)
    assert ours["local"] == pytest.approx(losses[1], rel=1e-5)
    assert ours["holistic"] == pytest.approx(losses[2], rel=1e-5)
    # proj.0.bias feeds a training-mode BN1d: its exact gradient is 0, float32 gives noise
    worst = compare_with_torch(m, net, ref64, ref32, zero_grad=("proj.0.bias",))
    # the trunk's 60 tensors + fr (2) + proj.0, proj.1, proj.3 (6, less proj.0.bias) + cls (2)
    assert len(worst) == 69


def test_frpa_eval_distribution_matches_torch(frpa_pair):
    m, net, _ = frpa_pair
    x = np.random.default_rng(3).standard_normal((3, 64, 64, 3)).astype(np.float32)
    ours = m.forward(x)["vanilla"]
    net.eval()
    with torch.no_grad():
        _, logits = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double())
    np.testing.assert_allclose(ours, F.softmax(logits, dim=1).numpy(), rtol=1e-3, atol=1e-5)


# -- on the GPU: glae's CUDA model against PyTorch's CUDA model --------------------------------
GLAE_GPU = bool(_C.HAS_CUDA and _C.cuda_devices())


@pytest.mark.skipif(not (GLAE_GPU and torch.cuda.is_available()),
                    reason="needs a GPU for both glae and torch")
def test_frpa_gpu_step_matches_torch_gpu():
    """The same fr+pa model, weights and batch in glae on the GPU (fp32 math) and in PyTorch
    on the GPU (float32, TF32 off): the losses agree, and every gradient of ours is at
    least as close to torch's float64 CPU result as torch's own GPU float32 one is."""
    torch.manual_seed(0)
    cfg = dict(r=4, k=4, s=4, proj_depth=1, proj_width=32)
    m = _C.Model("resnet18", "fr+pa", input_size=64, seed=5, device="cuda", math="fp32", **cfg)
    net = FRPATorch(4, 4, 4, 101, 2 * 2, 32, 1)
    sd = {k: torch.from_numpy(m.get(k).copy()) for k, *_ in m.param_table()
          if not k.startswith("balanced.")}
    net.load_state_dict(sd, strict=False)
    net64, net_gpu = net.double(), copy.deepcopy(net).float().cuda()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
    ages = np.array([6.0, 31.0, 52.5, 77.0], np.float32)
    m.zero_grad()
    ours = m.train_step(x, ages, None, stage=1, loss="base")
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        def grads(model, dtype, device):
            model.train()
            model.zero_grad()
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device=device, dtype=dtype)
            fmap, logits = model(xt)
            total, l_loc, l_hol = frpa_losses_torch(fmap.cpu(), logits.cpu(),
                                                    torch.from_numpy(ages).double())
            total.backward()
            return ([v.item() for v in (total, l_loc, l_hol)],
                    {k: p.grad.double().cpu().numpy() for k, p in model.named_parameters()})

        losses, ref64 = grads(net64, torch.float64, "cpu")
        gpu_losses, ref32 = grads(net_gpu, torch.float32, "cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for i, k in enumerate(("total", "local", "holistic")):
        assert ours[k] == pytest.approx(losses[i], rel=1e-5), k
        assert gpu_losses[i] == pytest.approx(losses[i], rel=1e-4), k
    worst = compare_with_torch(m, net64, ref64, ref32, zero_grad=("proj.0.bias",))
    assert len(worst) == 69


# -- mixed precision against PyTorch's autocast ------------------------------------------------
def warmed_frpa(device, math, steps=10):
    """An fr+pa model trained a few float32 steps on the CPU (past the chaotic start of a
    random initialisation, see tests/test_bf16.py), then copied into a `math` model on
    `device` and into the torch module."""
    cfg = dict(r=4, k=4, s=4, proj_depth=1, proj_width=32)
    base = _C.Model("resnet18", "fr+pa", input_size=64, seed=6, **cfg)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((8, 64, 64, 3)).astype(np.float32)
    ages = rng.uniform(1, 90, 8).astype(np.float32)
    for i in range(steps):
        base.zero_grad()
        base.train_step(x, ages)
        base.sgd_step(0.002, 0.9, 0.0, 5e-4, True, i == 0)
    m = _C.Model("resnet18", "fr+pa", input_size=64, seed=6, device=device, math=math, **cfg)
    m.write_flat("params", base.params.copy())
    m.write_flat("buffers", base.buffers.copy())
    net = FRPATorch(4, 4, 4, 101, 2 * 2, 32, 1)
    sd = {k: torch.from_numpy(base.get(k).copy()) for k, *_ in base.param_table()
          if not k.startswith("balanced.")}
    net.load_state_dict(sd, strict=False)
    return m, net, x, ages


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_bf16_step_as_close_to_float64_as_torch_autocast(device):
    """glae's mixed precision (math="bf16") against torch.autocast(bfloat16) on the same
    device, same weights and batch: measured against torch float64, glae's loss and
    gradients must be about as close as autocast's (a bf16 implementation nobody here
    wrote). CPU: glae's CPU bf16 layers vs torch's CPU autocast; cuda: both on the GPU."""
    if device == "cuda" and not (GLAE_GPU and torch.cuda.is_available()):
        pytest.skip("needs a GPU for both glae and torch")
    m, net, x, ages = warmed_frpa(device, "bf16")
    net64 = copy.deepcopy(net).double()
    net16 = copy.deepcopy(net).float().to(device)
    if device == "cuda":
        net16 = net16.to(memory_format=torch.channels_last)
    m.zero_grad()
    ours = m.train_step(x, ages, None, stage=1, loss="base")

    def grads(model, dtype, autocast):
        model.train()
        model.zero_grad()
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device=next(model.parameters()).device, dtype=dtype)
        with torch.autocast(device_type=xt.device.type, dtype=torch.bfloat16, enabled=autocast):
            fmap, logits = model(xt)
        total, _, _ = frpa_losses_torch(fmap.double().cpu(), logits.double().cpu(),
                                        torch.from_numpy(ages).double())
        total.backward()
        return total.item(), {k: p.grad.double().cpu().numpy() for k, p in model.named_parameters()}

    l64, ref64 = grads(net64, torch.float64, False)
    l16, amp = grads(net16, torch.float32, True)
    ours_all, amp_all, ref_all = [], [], []
    for name, shape, off, numel, is_buf, _, _ in m.param_table():
        if is_buf or name.startswith("balanced.") or name == "proj.0.bias":
            continue
        ours_all.append(internal_to_torch(m.grads[off:off + numel], shape).ravel())
        amp_all.append(amp[name].ravel())
        ref_all.append(ref64[name].ravel())
    ours_all, amp_all, ref_all = map(np.concatenate, (ours_all, amp_all, ref_all))
    e_ours = np.linalg.norm(ours_all - ref_all) / np.linalg.norm(ref_all)
    e_amp = np.linalg.norm(amp_all - ref_all) / np.linalg.norm(ref_all)
    print(f"{device}: loss float64 {l64:.5f}, glae bf16 {ours['total']:.5f}, autocast {l16:.5f}; "
          f"gradient rel. error glae {e_ours:.4f}, autocast {e_amp:.4f}")
    assert abs(ours["total"] - l64) <= 3 * abs(l16 - l64) + 2e-3 * abs(l64)
    assert e_ours <= 2 * e_amp + 0.01
