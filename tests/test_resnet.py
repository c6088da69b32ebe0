"""The ResNet backbone of _C.Model: torchvision names and shapes, parameter counts, init,
whole-network gradients against finite differences, a learning test, views, bad input."""
import sys

import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified


def torchvision_state_dict(depth, num_classes=1000):
    """torchvision's resnet18/resnet50 state_dict keys and shapes (without
    num_batches_tracked), written from the published architecture."""
    keys = []

    def conv(name, cout, cin, k):
        keys.append((f"{name}.weight", (cout, cin, k, k)))

    def bn(name, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            keys.append((f"{name}.{s}", (c,)))

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    blocks = [2, 2, 2, 2] if depth == 18 else [3, 4, 6, 3]
    expansion = 1 if depth == 18 else 4
    inplanes = 64
    for li, nb in enumerate(blocks):
        planes = 64 * 2 ** li
        for bi in range(nb):
            p = f"layer{li + 1}.{bi}"
            stride = 2 if li > 0 and bi == 0 else 1
            if depth == 18:
                conv(f"{p}.conv1", planes, inplanes, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            else:
                conv(f"{p}.conv1", planes, inplanes, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            if stride != 1 or inplanes != planes * expansion:
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    keys.append(("fc.weight", (num_classes, inplanes)))
    keys.append(("fc.bias", (num_classes,)))
    return keys


@pytest.mark.parametrize("depth,total", [(18, 11_689_512), (50, 25_557_032)])
def test_names_shapes_counts_match_torchvision(depth, total):
    m = _C.Model(f"resnet{depth}", "gap", num_classes=1000, input_size=32)
    table = m.param_table()
    ours = [(name, tuple(shape)) for name, shape, off, numel, buf, group, nd in table
            if group in (0, 1)]
    assert ours == torchvision_state_dict(depth)
    # the balanced head mirrors the vanilla one under a prefix
    bal = [(name, tuple(shape)) for name, shape, *_, group, nd in table if group == 2]
    assert bal == [("balanced.fc.weight", (1000, 512 * (1 if depth == 18 else 4))),
                   ("balanced.fc.bias", (1000,))]
    trainable = sum(numel for _, _, _, numel, buf, group, _ in table if not buf and group < 2)
    assert trainable == total
    # each group's range spans exactly its tensors
    for g, gname in enumerate(("backbone", "head", "balanced")):
        rows = [(off, off + numel) for _, _, off, numel, buf, group, _ in table
                if not buf and group == g]
        assert m.group_range(gname) == (min(r[0] for r in rows), max(r[1] for r in rows))
    # offsets in table order, each on a 16-float (64-byte) boundary for cuDNN and cuBLAS,
    # no overlap, less than 16 floats of (zero) padding before each; the flat buffers end
    # with the last tensor
    for is_buf, flat in ((False, m.params), (True, m.buffers)):
        end = 0
        for _, _, off, numel, buf, *_ in table:
            if buf == is_buf:
                assert off % 16 == 0 and end <= off < end + 16
                end = off + numel
        assert flat.size == end
    # no_decay marks BN parameters and biases
    for name, shape, off, numel, buf, group, nd in table:
        assert numel == int(np.prod(shape))
        assert nd == (not buf and (name.endswith("bias") or ".bn" in name or name.startswith("bn")
                                   or "downsample.1" in name))


def test_init_statistics():
    m = _C.Model("resnet18", "gap", num_classes=101, input_size=32, seed=3)
    for name, shape, off, numel, buf, group, nd in m.param_table():
        v = m.get(name)
        if len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            std = np.sqrt(2.0 / fan_out)
            assert abs(v.mean()) < 4 * std / np.sqrt(numel) + 1e-7, name
            assert abs(v.std() / std - 1) < max(0.05, 4 / np.sqrt(numel)), name
        elif name.endswith("running_var") or (".bn" in name or name.startswith("bn")
                                              or "downsample.1" in name) and name.endswith("weight"):
            np.testing.assert_array_equal(v, 1.0)
        elif name.endswith("running_mean") or ("bn" in name or "downsample.1" in name):
            np.testing.assert_array_equal(v, 0.0)
        else:  # fc: PyTorch's default uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1 / np.sqrt(512)
            assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound, name
            if v.size > 1000:
                assert abs(v.std() / (bound / np.sqrt(3)) - 1) < 0.05
    # the same seed gives the same weights, another seed others
    m2 = _C.Model("resnet18", "gap", num_classes=101, input_size=32, seed=3)
    np.testing.assert_array_equal(m.params, m2.params)
    m3 = _C.Model("resnet18", "gap", num_classes=101, input_size=32, seed=4)
    assert not np.array_equal(m.params[:1000], m3.params[:1000])


def test_oihw_import_export_roundtrip(rng):
    m = _C.Model("resnet18", "gap", input_size=32)
    w = rng.standard_normal((64, 3, 7, 7)).astype(np.float32)
    assert_unmodified(lambda a: m.set("conv1.weight", a), w)
    np.testing.assert_array_equal(m.get("conv1.weight"), w)
    # stored OHWI in the flat buffer
    stored = m.params[:w.size].reshape(64, 7, 7, 3)
    np.testing.assert_array_equal(stored, w.transpose(0, 2, 3, 1))
    b = rng.standard_normal(101).astype(np.float32)
    m.set("fc.bias", b)
    np.testing.assert_array_equal(m.get("fc.bias"), b)


def _loss(m, x, ages):
    m.zero_grad()
    return m.train_step(x, ages, loss="kl")["total"]


def test_whole_network_gradient_finite_differences(rng):
    """Training-mode BN, smooth loss (KL): analytic grads of a few tensors of every kind
    against central differences of the float32 loss."""
    m = _C.Model("resnet18", "gap", input_size=64, seed=1)
    x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    ages = np.array([23.0, 61.0], np.float32)
    _loss(m, x, ages)
    g = m.grads.copy()
    params = m.params
    table = {name: (off, numel) for name, shape, off, numel, buf, *_ in m.param_table() if not buf}
    names = ["conv1.weight", "bn1.weight", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
             "layer3.1.bn1.bias", "layer4.1.conv2.weight", "layer4.1.bn2.weight", "fc.weight",
             "fc.bias"]
    checked = 0
    for name in names:
        off, numel = table[name]
        idx = off + np.argsort(-np.abs(g[off:off + numel]))[:1]  # the largest: above FD noise
        for i in idx:
            eps = 1.5e-3  # small: the loss is curved (BN, ReLU); float32 noise ~1e-4 here
            old = params[i]
            params[i] = old + eps
            fp = _loss(m, x, ages)
            params[i] = old - eps
            fm = _loss(m, x, ages)
            params[i] = old
            num = (fp - fm) / (2 * eps)
            assert abs(num - g[i]) <= 0.05 * abs(g[i]) + 1e-3, (name, i, num, g[i])
            checked += 1
    assert checked == len(names)
    # the loss does not depend on the order of the batch (BN statistics are per batch)
    l1 = _loss(m, x, ages)
    l2 = _loss(m, x[::-1].copy(), ages[::-1].copy())
    assert abs(l1 - l2) < 1e-4 * abs(l1)


def _conv_ref(x, w, stride, pad):
    """x (N, H, W, C) float64, w OIHW -> (N, OH, OW, O): an independent NumPy convolution."""
    o, i, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    win = win[:, ::stride, ::stride]  # (N, OH, OW, C, KH, KW)
    return np.tensordot(win, w.astype(np.float64), axes=([3, 4, 5], [1, 2, 3]))


def _resnet50_forward_ref(m, x):
    """torchvision's ResNet-50 (Bottleneck v1.5) in float64 NumPy with training-mode batch
    norm, from the model's weights by name. Returns (feature map, fc logits, running stats
    after the pass: {name: value})."""
    get = lambda n: m.get(n).astype(np.float64)
    stats = {}

    def bn(t, name):
        mean = t.mean(axis=(0, 1, 2))
        var = t.var(axis=(0, 1, 2))
        n = t.size // t.shape[-1]
        stats[f"{name}.running_mean"] = (0.9 * get(f"{name}.running_mean") + 0.1 * mean)
        stats[f"{name}.running_var"] = (0.9 * get(f"{name}.running_var")
                                        + 0.1 * var * n / (n - 1))
        return (t - mean) / np.sqrt(var + 1e-5) * get(f"{name}.weight") + get(f"{name}.bias")

    relu = lambda t: np.maximum(t, 0)
    t = relu(bn(_conv_ref(x.astype(np.float64), get("conv1.weight"), 2, 3), "bn1"))
    tp = np.pad(t, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    t = np.lib.stride_tricks.sliding_window_view(tp, (3, 3), axis=(1, 2))[:, ::2, ::2].max(
        axis=(4, 5))
    for li, nb in enumerate([3, 4, 6, 3]):
        for bi in range(nb):
            p = f"layer{li + 1}.{bi}"
            stride = 2 if li > 0 and bi == 0 else 1
            out = relu(bn(_conv_ref(t, get(f"{p}.conv1.weight"), 1, 0), f"{p}.bn1"))
            out = relu(bn(_conv_ref(out, get(f"{p}.conv2.weight"), stride, 1), f"{p}.bn2"))
            out = bn(_conv_ref(out, get(f"{p}.conv3.weight"), 1, 0), f"{p}.bn3")
            if bi == 0:  # every first block has a downsample, layer1's with stride 1
                t = bn(_conv_ref(t, get(f"{p}.downsample.0.weight"), stride, 0),
                       f"{p}.downsample.1")
            t = relu(out + t)
    logits = t.mean(axis=(1, 2)) @ get("fc.weight").T + get("fc.bias")
    return t, logits, stats


def _randomise_affine(m, rng):
    """BN weight/bias and the fc bias away from their 1/0 init, so that a swapped or
    misplaced affine parameter changes the result."""
    for name, shape, off, numel, buf, group, nd in m.param_table():
        if buf or group != 0 and not name.startswith("fc."):
            continue
        if name.endswith(".bias") or (nd and name.endswith(".weight")):
            base = 1.0 if name.endswith(".weight") and not name.startswith("fc.") else 0.0
            m.set(name, (base + 0.2 * rng.standard_normal(shape)).astype(np.float32))


def _directional_fd(m, x, ages, names, rng, k=8, dls=(1e-3, 3e-4)):
    """Central differences of the float32 loss along a direction v over k elements of each
    named tensor: its 4 largest-gradient elements and k - 4 random ones of its upper half.
    v_i = sign(g_i) * U(0.5, 1), so the terms add up instead of cancelling and one wrong
    element shows. Each step h makes the first-order change of the loss ~dl: the larger one
    stays above float32 noise (~1e-5 in the loss here), which dominates the stem at smaller
    steps; the smaller one is needed deep down, where BN over 8 values per channel curves
    the loss (layer4's 3x3 is 15% off at dl=3e-3, 9% at 1e-3, 1% at 3e-4). The prediction
    uses the perturbation actually stored (float32 rounding), in float64.
    Returns {name: [(finite difference, analytic) for each dl]}."""
    _loss(m, x, ages)
    g = m.grads.astype(np.float64)
    params = m.params
    table = {name: (off, numel) for name, shape, off, numel, buf, *_ in m.param_table()
             if not buf}
    out = {}
    for name in names:
        off, numel = table[name]
        order = np.argsort(-np.abs(g[off:off + numel]))
        rest = order[4:max(numel // 2, k)]
        idx = off + np.concatenate([order[:4], rng.choice(rest, k - 4, replace=False)])
        v = np.sign(g[idx]) * rng.uniform(0.5, 1.0, idx.size)
        old = params[idx].copy()
        out[name] = []
        for dl in dls:
            h = min(dl / abs(g[idx] @ v), 1e-2)
            params[idx] = old + h * v
            up = params[idx].astype(np.float64) - old
            fp = _loss(m, x, ages)
            params[idx] = old - h * v
            down = old - params[idx].astype(np.float64)
            fm = _loss(m, x, ages)
            params[idx] = old
            out[name].append(((fp - fm) / (2 * h), g[idx] @ (up + down) / (2 * h)))
    return out


def test_resnet50_forward_matches_numpy(rng):
    """The whole ResNet-50 forward (training-mode BN) and its running-statistics update
    against an independent float64 NumPy implementation of torchvision's topology."""
    m = _C.Model("resnet50", "gap", input_size=48, seed=2)
    _randomise_affine(m, rng)
    x = rng.standard_normal((2, 48, 48, 3)).astype(np.float32)
    feat, logits, stats = _resnet50_forward_ref(m, x)
    got = assert_unmodified(lambda a: m.forward(a, training=True), x)
    assert got["feature"].shape == (2, 2, 2, 2048) and got["vanilla"].shape == (2, 101)
    scale = np.abs(feat).max()
    np.testing.assert_allclose(got["feature"], feat, rtol=0, atol=2e-4 * scale)
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got["vanilla"], prob, rtol=1e-3, atol=1e-6)  # the head's softmax
    for name, want in stats.items():
        np.testing.assert_allclose(m.get(name), want, rtol=1e-3, atol=1e-4, err_msg=name)
    assert len(stats) == 2 * 53  # every BN of ResNet-50 was checked


def test_resnet50_gradient_finite_differences(rng):
    """Training-mode BN, smooth loss (KL): the analytic gradient of ResNet-50 along a
    direction over a sample of elements of every kind of tensor, against central
    differences (_directional_fd)."""
    m = _C.Model("resnet50", "gap", input_size=48, seed=1)
    x = rng.standard_normal((2, 48, 48, 3)).astype(np.float32)
    ages = np.array([23.0, 61.0], np.float32)
    names = ["conv1.weight", "bn1.weight",
             "layer1.0.downsample.0.weight",  # stride-1 downsample (64 -> 256)
             "layer1.0.bn1.bias", "layer1.1.conv1.weight",
             "layer2.0.conv2.weight",  # the stride-2 3x3 (v1.5)
             "layer2.0.downsample.1.bias", "layer2.3.conv3.weight",
             "layer3.0.downsample.0.weight",  # stride-2 downsample
             "layer3.2.bn3.weight", "layer4.2.conv2.weight", "layer4.1.bn2.bias",
             "fc.weight", "fc.bias"]
    res = _directional_fd(m, x, ages, names, rng)
    # the better of the two steps: a correct gradient agrees with one of them, a wrong one
    # with neither (seen: <= 0.035 over seeds and sizes)
    rel = {name: min(abs(num - ana) / abs(ana) for num, ana in r) for name, r in res.items()}
    print("relative error per tensor:", {k: f"{v:.4f}" for k, v in rel.items()})
    bad = {name: res[name] for name, r in rel.items() if r > 0.06}
    assert not bad, f"finite difference vs analytic at each step: {bad}"


def test_resnet18_learns_a_tiny_batch(rng):
    m = _C.Model("resnet18", "gap", input_size=64, seed=0)
    x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    ages = np.array([18.0, 70.0], np.float32)
    p, g = m.params, m.grads
    first = None
    for step in range(15):
        m.zero_grad()
        loss = m.train_step(x, ages, loss="kl")["total"]
        first = first if first is not None else loss
        p -= 0.01 * g  # plain SGD on the flat view
    final = _loss(m, x, ages)
    assert final < first / 10, (first, final)


def test_views_share_memory_and_hold_the_model():
    m = _C.Model("resnet18", "gap", input_size=32)
    base = sys.getrefcount(m)
    p = m.params
    assert sys.getrefcount(m) == base + 1
    assert p.dtype == np.float32 and p.ndim == 1 and not p.flags.owndata
    g, mom, buf = m.grads, m.momentum, m.buffers
    assert sys.getrefcount(m) == base + 4
    p[0] = 123.0
    assert m.get("conv1.weight").reshape(-1)[0] == 123.0  # OIHW index 0 == OHWI index 0
    mom[:] = 1.0
    assert m.momentum[5] == 1.0
    del p, g, mom, buf
    assert sys.getrefcount(m) == base
    # a view outlives its name
    q = _C.Model("resnet18", "gap", input_size=32).buffers
    assert q.sum() > 0  # running_var = 1
    # __init__ again would free the memory the views share (a double free): refused
    p = m.params
    with pytest.raises(RuntimeError, match="already built"):
        m.__init__("resnet18", "gap", input_size=32)
    p[:] = 1.0
    assert m.params[7] == 1.0


def test_no_reference_leaks(rng):
    m = _C.Model("resnet18", "gap", input_size=32)
    x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    ages = np.array([30.0, 40.0], np.float32)
    assert_no_leak(m.train_step, x, ages, n=5)
    assert_no_leak(m.predict, x, n=5)
    assert_no_leak(m.forward, x, n=5)
    assert_no_leak(m.get, "fc.bias", n=50)
    w = m.get("fc.bias")
    assert_no_leak(m.set, "fc.bias", w, n=50)
    assert_no_leak(m.param_table, n=5)
    assert_unmodified(m.train_step, x, ages)


def test_bad_input(rng):
    with pytest.raises(ValueError, match="backbone"):
        _C.Model("resnet34")
    with pytest.raises(ValueError, match="head"):
        _C.Model("resnet18", "mlp")
    with pytest.raises(ValueError, match="proj_depth"):
        _C.Model(proj_depth=3)
    with pytest.raises(ValueError, match="proj_width"):
        _C.Model(proj_width=0)
    with pytest.raises(ValueError, match="num_classes"):
        _C.Model(num_classes=1)
    with pytest.raises(ValueError, match="r=3"):
        _C.Model(head="fr", r=3, k=3, s=3)
    with pytest.raises(ValueError, match="r"):
        _C.Model(r=-1)
    with pytest.raises(TypeError):
        _C.Model(seed="x")
    m = _C.Model("resnet18", "gap", input_size=32)
    x = np.zeros((2, 32, 32, 3), np.float32)
    ages = np.array([1.0, 2.0], np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        m.train_step(x.astype(np.float64), ages)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        m.predict([[1.0]])
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        m.forward(x[0])
    with pytest.raises(ValueError, match="x: dimension 3 must be 3"):
        m.forward(np.zeros((2, 32, 32, 4), np.float32))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        m.forward(x[:, :, ::2])
    with pytest.raises(ValueError, match="x: the batch is empty"):
        m.forward(x[:0])
    with pytest.raises(ValueError, match="ages: dimension 0 must be 2"):
        m.train_step(x, ages[:1])
    with pytest.raises(TypeError, match="ages must have dtype float32"):
        m.train_step(x, ages.astype(np.float64))
    with pytest.raises(ValueError, match="sigma: dimension 0 must be 2"):
        m.train_step(x, ages, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="sigma must have dtype float32"):
        m.train_step(x, ages, np.ones(2, np.int32))
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        m.train_step(x, ages, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="outside"):
        m.train_step(x, np.array([1.0, 200.0], np.float32))
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        m.train_step(x, ages, stage=3)
    with pytest.raises(ValueError, match="loss must be"):
        m.train_step(x, ages, loss="mse")
    with pytest.raises(ValueError, match="route must be"):
        m.predict(x, route="random")
    with pytest.raises(ValueError, match=r"^get: no tensor named 'nope' \(param_table"):
        m.get("nope")
    with pytest.raises(ValueError, match=r"^set: no tensor named 'fc.nope'"):
        m.set("fc.nope", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"value for 'conv1.weight' must have shape \(64, 3, 7, 7\)"):
        m.set("conv1.weight", np.zeros((64, 7, 7, 3), np.float32))
    with pytest.raises(ValueError, match="value must have 1 dimensions"):
        m.set("fc.bias", np.zeros((1, 101), np.float32))
    with pytest.raises(ValueError, match="group must be"):
        m.group_range("neck")
    with pytest.raises(TypeError, match="group must be"):
        m.group_range(1.5)
    # an FR conv bigger than the rearranged map of a small image
    fr = _C.Model("resnet18", "fr", r=2, k=3, s=1, input_size=64)
    with pytest.raises(ValueError, match="x: .*smaller than the FR kernel"):
        fr.forward(np.zeros((1, 32, 32, 3), np.float32))
    # fr+pa's projection is sized for its input_size
    frpa = _C.Model("resnet18", "fr+pa", input_size=64)
    with pytest.raises(ValueError, match="x: .*input_size=64"):
        frpa.predict(np.zeros((1, 128, 128, 3), np.float32))
    # training-mode BN needs two values per channel (as in PyTorch): a 1x1 map, one image
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m.train_step(x[:1], ages[:1])
    # nothing is broken after the failures
    m.forward(x)
    m.train_step(x, ages)


@pytest.mark.parametrize("math", ["fp32", "bf16"])
def test_plans_without_backward_reuse_activation_buffers(math):
    """Without a backward (predict, forward, a stage-2 step on the frozen backbone) no
    activation outlives the next block, so glae_resnet_plan lets four slots take turns
    instead of keeping every activation: ResNet-50 then needs a sixth of a stage-1 step's
    arena, ResNet-18 under two fifths. Predict on
    a fresh model equals predict after a stage-1 plan grew the arena, bit for bit (the
    re-plan back). The shared buffers' values are checked against keeping every
    activation (test_shared_activation_slots_equal_keeping_every_activation) and by
    independent references: test_resnet50_forward_matches_numpy (float32, every block
    kind) and test_bf16_model_forward_close_to_float32 (bf16, both backbones)."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    ages = np.full(4, 30, np.float32)
    for arch, most in (("resnet18", 0.4), ("resnet50", 0.2)):
        sizes, probs = {}, {}
        for what in ("predict", "stage2", "stage1"):
            m = _C.Model(arch, "gap", input_size=96, math=math, seed=1)
            m.copy_head_to_balanced()
            start = np.array(m.buffers)
            if what == "predict":
                # the batch itself, no flipped copy: the same N as the training steps
                probs["fresh"] = m.predict(x, route="vanilla", flip=False, norm="glae")[1]
            else:
                m.train_step(x, ages, None, stage=1 if what == "stage1" else 2, loss="lae_cls",
                             mae=4.0, norm="glae")
            sizes[what] = m.arena_bytes
        # the stage-1 model's parameters are unchanged (no SGD step); its BN statistics
        # moved with the step: put them back
        m.write_flat("buffers", start)
        probs["after stage 1"] = m.predict(x, route="vanilla", flip=False, norm="glae")[1]
        assert sizes["predict"] < most * sizes["stage1"], (arch, sizes)
        assert sizes["stage2"] < most * sizes["stage1"], (arch, sizes)
        np.testing.assert_array_equal(probs["after stage 1"], probs["fresh"])


GPUS = ["cuda"] if _C.HAS_CUDA and _C.cuda_devices() else []


@pytest.mark.parametrize("device", ["cpu"] + GPUS)
@pytest.mark.parametrize("math", ["fp32", "bf16"])
def test_shared_activation_slots_equal_keeping_every_activation(math, device):
    """The four slots of a plan without backward give what keeping every activation gives
    (keep_activations, the training plan's placement): predict with every route and flip
    setting, forward in both BN modes, a stage-2 step's losses and gradient, for both
    backbones and heads. A slot overwritten while its value is still to be read changes
    some output here, whatever the forward's order. On the CPU bit for bit; on a GPU to
    1e-6 (its reductions may use atomics), far below what an overwritten slot does."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    ages = np.array([7, 30, 64], np.float32)

    def same(a, b, what):
        if device == "cpu":
            np.testing.assert_array_equal(a, b, err_msg=what)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=what)

    def outputs(m):
        out = {}
        for route in ("vanilla", "balanced", "smaller", "bigger"):
            for flip in (False, True):
                r = m.predict(x, route=route, flip=flip, norm="glae", head_ages=True,
                              return_upsilon=True)
                for i, v in enumerate(r):
                    out[f"predict {route} flip={flip} [{i}]"] = np.array(v)
        for training in (False, True):
            for k, v in m.forward(x, training=training, norm="glae").items():
                out[f"forward training={training} {k}"] = np.array(v)
        m.zero_grad()
        out["stage 2 losses"] = np.array(m.train_step(x, ages, None, stage=2, mae=4.0,
                                                      norm="glae"))
        out["stage 2 grads"] = np.array(m.grads)
        return out

    for arch in ("resnet18", "resnet50"):
        for head in ("gap", "fr+pa"):
            m = _C.Model(arch, head, input_size=64, math=math, seed=2, device=device)
            # the balanced head unlike the vanilla one, so that the routes differ
            for name, shape, off, numel, buf, group, nd in m.param_table():
                if name.startswith("balanced.") and not buf:
                    m.set(name, (0.05 * rng.standard_normal(shape)).astype(np.float32))
            start = np.array(m.buffers)
            shared = outputs(m)
            shared_bytes = m.arena_bytes
            m.write_flat("buffers", start)  # forward(training=True) moved the BN statistics
            m.keep_activations()
            kept = outputs(m)
            assert m.arena_bytes > shared_bytes, (arch, head)
            assert shared.keys() == kept.keys()
            for k in shared:
                same(shared[k], kept[k], f"{arch} {head} {k}")
            # and back: sharing again after keeping
            m.write_flat("buffers", start)
            m.keep_activations(False)
            again = outputs(m)
            for k in shared:
                same(again[k], shared[k], f"{arch} {head} {k}")
