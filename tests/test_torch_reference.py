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


def torch_grads(net, x, ages, dtype):
    net.train()
    net.zero_grad()
    logits = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype))
    loss = ldl_loss_torch(logits, torch.from_numpy(ages).double())
    loss.backward()
    return loss.item(), {k: p.grad.double().numpy() for k, p in net.named_parameters()}


def test_training_step_matches_torchvision(pair):
    m, net, net32 = pair
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
    ages = np.array([3.0, 25.0, 47.5, 80.0], np.float32)
    m.zero_grad()
    ours = m.train_step(x, ages, None, stage=1, loss="base")
    loss, ref64 = torch_grads(net, x, ages, torch.float64)
    _, ref32 = torch_grads(net32, x, ages, torch.float32)
    assert ours["total"] == pytest.approx(loss, rel=1e-5)
    worst = {}
    buffers = dict(net.named_buffers())
    for name, shape, offset, numel, is_buffer, group, _ in m.param_table():
        if name.startswith("balanced."):
            continue
        if is_buffer:  # running statistics after one training-mode forward
            ref = buffers[name].numpy()
            got = m.buffers[offset:offset + numel].reshape(shape)
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=name)
            continue
        ref = ref64[name]
        got = internal_to_torch(m.grads[offset:offset + numel], shape)
        # relative L2 error per tensor: a handful of elements whose ReLU / max-pool choice
        # flips between float32 and float64 forwards would dominate a max-abs measure
        scale = max(np.linalg.norm(ref), 1e-12)
        ours_err = np.linalg.norm(got - ref) / scale
        torch_err = np.linalg.norm(ref32[name] - ref) / scale
        worst[name] = (ours_err, torch_err)
    bad = {k: v for k, v in worst.items() if v[0] > max(2 * v[1], 1e-5)}
    assert not bad, f"gradients further from float64 than torch float32 is: {bad}"
    assert len(worst) == 62  # every trainable tensor of ResNet-18 + fc was compared
    print("worst relative L2 error, ours vs torch float32:",
          max(v[0] for v in worst.values()), max(v[1] for v in worst.values()))


def test_eval_distribution_matches_torchvision(pair):
    m, net, _ = pair
    x = np.random.default_rng(1).standard_normal((3, 64, 64, 3)).astype(np.float32)
    ours = m.forward(x)["vanilla"]
    net.eval()
    with torch.no_grad():
        ref = F.softmax(net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double()), dim=1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-5)
