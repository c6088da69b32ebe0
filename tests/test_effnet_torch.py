"""EfficientNetV2-S against torchvision (an implementation nobody here wrote): the same
weights and batch, a training step in training mode, then the loss, every parameter
gradient and the BN running statistics must agree; once with stochastic depth off and
once with glae's drop masks fed to torchvision's StochasticDepth. Skipped where
torch/torchvision are not installed (they are not test dependencies)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
if not hasattr(torchvision.models, "efficientnet_v2_s"):
    pytest.skip("torchvision without efficientnet_v2_s (needs >= 0.13)", allow_module_level=True)

from glae import _C  # noqa: E402

from test_torch_reference import compare_with_torch, internal_to_torch, ldl_loss_torch  # noqa: E402

SIZE, N = 64, 4


class EffNetGap(torch.nn.Module):
    """torchvision's efficientnet_v2_s trunk + glae's gap head (average pool, fc to K):
    attribute names give glae's parameter names."""

    def __init__(self, K=101):
        super().__init__()
        self.features = torchvision.models.efficientnet_v2_s().features
        self.fc = torch.nn.Linear(1280, K)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def make_pair(stochastic_depth):
    torch.manual_seed(0)
    m = _C.Model("efficientnet_v2_s", "gap", input_size=SIZE, seed=7,
                 stochastic_depth=stochastic_depth)
    net = EffNetGap()
    sd = {k: torch.from_numpy(m.get(k).copy()) for k, *_ in m.param_table()
          if not k.startswith("balanced.")}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (
        unexpected, [k for k in missing if not k.endswith("num_batches_tracked")])
    return m, net


def use_masks(net, masks):
    """Every StochasticDepth of net multiplies by masks[block] (n,) instead of drawing."""
    blocks = [b for stage in list(net.features)[1:-1] for b in stage]
    for i, b in enumerate(blocks):
        sd = b.stochastic_depth
        if i in masks:
            s = torch.from_numpy(masks[i])
            sd.forward = lambda x, s=s: x * s.to(x.dtype).view(-1, 1, 1, 1)
        else:
            sd.p = 0.0


def glae_masks(m, n, seed, step, prob=0.2):
    """The drop scales glae draws for each residual block of the step (nn/droppath.h)."""
    stages = _C.EFFNET_STAGES["efficientnet_v2_s"]
    total = sum(s[-1] for s in stages)
    masks, i = {}, 0
    for fused, e, k, stride, cin, cout, layers in stages:
        for j in range(layers):
            res = (stride == 1 or j > 0) and (cin == cout or j > 0)
            p = np.float32(prob) * np.float32(i) / np.float32(total)
            if res and p > 0:
                masks[i] = _C.drop_path_scales(n, float(p), seed, step, i)
            i += 1
    return masks


def step_and_compare(m, net, masks=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, SIZE, SIZE, 3)).astype(np.float32)
    ages = np.array([4.0, 23.0, 46.5, 79.0], np.float32)
    net64, net32 = copy.deepcopy(net).double(), copy.deepcopy(net).float()
    use_masks(net64, masks or {})  # no masks: torchvision's stochastic depth off
    use_masks(net32, masks or {})
    m.zero_grad()
    ours = m.train_step(x, ages, None, stage=1, loss="base")

    def grads(model, dtype, order):
        model.train()
        model.zero_grad()
        xt = torch.from_numpy(x[order].transpose(0, 3, 1, 2).copy()).to(dtype)
        if masks is not None:  # the masks follow their samples
            use_masks(model, {b: s[order] for b, s in masks.items()})
        loss = ldl_loss_torch(model(xt), torch.from_numpy(ages[order]).double())
        loss.backward()
        return loss.item(), {k: p.grad.double().numpy() for k, p in model.named_parameters()}

    ident = np.arange(N)
    loss, ref64 = grads(net64, torch.float64, ident)
    ref32 = [grads(copy.deepcopy(net32), torch.float32, o)[1]
             for o in (ident, ident[::-1], np.roll(ident, 1))]
    assert ours["total"] == pytest.approx(loss, rel=1e-5)
    # a per-channel shift of the residual stream between two training-mode BNs changes
    # nothing: those BN biases' exact gradient is 0 (float32 gives noise)
    zero = {k for k, g in ref64.items() if np.linalg.norm(g) < 1e-10}
    worst = compare_with_torch(m, net64, ref64, ref32, zero_grad=zero)
    worst.update({k: (0.0, 0.0) for k in zero})
    return ours["total"], loss, worst


def test_effnet_v2_s_step_matches_torchvision_without_drop():
    m, net = make_pair(0.0)
    ours, ref, worst = step_and_compare(m, net)
    # every trainable tensor of efficientnet_v2_s's features + fc
    n_trainable = sum(1 for _ in net.named_parameters())
    assert len(worst) == n_trainable
    print(f"loss glae {ours:.7f} torch float64 {ref:.7f}")


def test_effnet_v2_s_step_matches_torchvision_with_the_same_drop_masks():
    m, net = make_pair(0.2)
    masks = glae_masks(m, N, seed=7, step=0)
    assert any((s == 0).any() for s in masks.values())  # some sample's branch is dropped
    step_and_compare(m, net, masks=masks, seed=1)
    assert m.drop_step == 1


def test_effnet_v2_s_eval_matches_torchvision():
    m, net = make_pair(0.2)
    x = np.random.default_rng(3).standard_normal((3, SIZE, SIZE, 3)).astype(np.float32)
    ours = m.forward(x)
    net64 = copy.deepcopy(net).double().eval()
    with torch.no_grad():
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double()
        feat = net64.features(xt)
        prob = torch.softmax(net64.fc(feat.mean((2, 3))), dim=1)
    np.testing.assert_allclose(ours["feature"], feat.permute(0, 2, 3, 1).numpy(), rtol=1e-3,
                               atol=1e-4)
    np.testing.assert_allclose(ours["vanilla"], prob.numpy(), rtol=1e-3, atol=1e-5)
