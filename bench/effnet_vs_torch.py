"""The largest differences between glae's EfficientNetV2-S step and torchvision's (issue 22,
docs/benchmarks.md): the same weights and batch as tests/test_effnet_torch.py, stochastic
depth off and with glae's masks fed to torchvision; prints the loss (glae, torch float64,
torch float32), the probabilities' largest difference, the worst relative L2 gradient
error against float64 of glae and of torch float32, and the BN running statistics' largest
difference. Needs torch and torchvision (>= 0.13):

    PYTHONPATH=. /path/to/torch-venv/bin/python bench/effnet_vs_torch.py
"""
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_effnet_torch import N, SIZE, glae_masks, make_pair, use_masks  # noqa: E402
from test_torch_reference import internal_to_torch, ldl_loss_torch  # noqa: E402


def torch_step(net, masks, x, ages, dtype):
    """probabilities, loss, gradients, buffers of one training-mode step in `dtype`"""
    n2 = copy.deepcopy(net).to(dtype)
    use_masks(n2, masks)
    n2.train()
    logits = n2(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype))
    loss = ldl_loss_torch(logits, torch.from_numpy(ages).double())
    loss.backward()
    return (torch.softmax(logits.double(), 1).detach().numpy(), loss.item(),
            {k: p.grad.double().numpy() for k, p in n2.named_parameters()},
            {k: b.double().numpy() for k, b in n2.named_buffers()})


def main():
    for drop in (0.0, 0.2):
        m, net = make_pair(drop)
        masks = glae_masks(m, N, seed=7, step=0) if drop else {}
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N, SIZE, SIZE, 3)).astype(np.float32)
        ages = np.array([4.0, 23.0, 46.5, 79.0], np.float32)
        p64, l64, g64, b64 = torch_step(net, masks, x, ages, torch.float64)
        p32, l32, g32, _ = torch_step(net, masks, x, ages, torch.float32)
        twin, _ = make_pair(drop)  # the same training-mode forward (drop step 0)
        prob = twin.forward(x, training=True)["vanilla"]
        m.zero_grad()
        loss = m.train_step(x, ages)["total"]
        ge = ge32 = be = 0.0
        for name, shape, off, cnt, is_buf, _, _ in m.param_table():
            if name.startswith("balanced."):
                continue
            if is_buf:
                be = max(be, np.abs(m.buffers[off:off + cnt].reshape(shape) - b64[name]).max())
                continue
            ref = g64[name]
            if np.linalg.norm(ref) < 1e-10:  # exact gradient 0 (BN bias between two BNs)
                continue
            got = internal_to_torch(m.grads[off:off + cnt], shape)
            ge = max(ge, np.linalg.norm(got - ref) / np.linalg.norm(ref))
            ge32 = max(ge32, np.linalg.norm(g32[name] - ref) / np.linalg.norm(ref))
        print(f"torch {torch.__version__}, stochastic depth {drop}: loss glae {loss:.7f}, "
              f"float64 {l64:.7f}, float32 {l32:.7f}; probabilities max |diff| vs float64 "
              f"{np.abs(prob - p64).max():.2g}; gradients worst rel. L2 vs float64: glae "
              f"{ge:.2g}, torch float32 {ge32:.2g}; running stats max |diff| {be:.2g}")


if __name__ == "__main__":
    main()
