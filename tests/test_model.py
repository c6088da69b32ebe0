"""The heads and the two-head model: shapes, FR/PA against NumPy on the backbone's feature
map, Adaptive Routing, stage-2 freezing, copy to the balanced head, learning."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_unmodified, numeric_grad

K = 101


def softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def pixel_shuffle_nchw(f, r):
    """PyTorch PixelShuffle on (N, C r^2, H, W) -> (N, C, H r, W r)."""
    n, c, h, w = f.shape
    co = c // (r * r)
    return f.reshape(n, co, r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, co, h * r, w * r)


def conv_nchw(x, w, b, s):
    """Valid (no padding) conv, stride s: x (N, C, H, W), w (O, C, k, k) -> (N, O, H', W')."""
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    hp, wp = (h - k) // s + 1, (wd - k) // s + 1
    out = np.zeros((n, o, hp, wp))
    for i in range(hp):
        for j in range(wp):
            patch = x[:, :, i * s:i * s + k, j * s:j * s + k].reshape(n, -1)
            out[:, :, i, j] = patch @ w.reshape(o, -1).T + b
    return out


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return rng.standard_normal((3, 64, 64, 3)).astype(np.float32)


@pytest.mark.parametrize("head", ["gap", "fr", "fr+pa"])
def test_output_shapes(head, images):
    m = _C.Model("resnet18", head, input_size=64)
    d = assert_unmodified(m.forward, images)
    n = len(images)
    assert d["feature"].shape == (n, 2, 2, 512)
    assert d["vanilla"].shape == (n, K) and d["balanced"].shape == (n, K)
    np.testing.assert_allclose(d["vanilla"].sum(1), 1, rtol=1e-5)
    keys = {"feature", "vanilla", "balanced"}
    if head != "gap":
        keys |= {"vanilla_map", "balanced_map"}
        assert d["vanilla_map"].shape == (n, 2, 2, K)  # 2x2x512 -> 2x32x32 -> 101x2x2
    if head == "fr+pa":
        keys.add("vanilla_local")
        np.testing.assert_allclose(d["vanilla_local"], softmax(d["vanilla_map"]), rtol=1e-4,
                                   atol=1e-7)
    assert set(d) == keys
    age, prob, which = m.predict(images)
    assert age.shape == (n,) and prob.shape == (n, K) and which.shape == (n,)
    assert which.dtype == np.int32 and set(which) <= {0, 1}
    np.testing.assert_allclose(age, prob @ np.arange(K), rtol=1e-4)
    for route in ("vanilla", "balanced", "bigger"):
        for flip in (True, False):
            a, p, w = m.predict(images, route=route, flip=flip)
            assert a.shape == (n,) and np.isfinite(p).all()


def test_fr_head_equals_numpy_pixel_shuffle_and_conv(images):
    m = _C.Model("resnet18", "fr", r=16, k=16, s=8, input_size=64, seed=2)
    d = m.forward(images)
    f = d["feature"].transpose(0, 3, 1, 2).astype(np.float64)  # NHWC -> NCHW
    w, b = m.get("fr.weight").astype(np.float64), m.get("fr.bias").astype(np.float64)
    assert w.shape == (K, 2, 16, 16)
    ref = conv_nchw(pixel_shuffle_nchw(f, 16), w, b, 8)  # (N, K, 3, 3)
    assert ref.shape[2:] == (3, 3)
    got = d["vanilla_map"].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # "fr" alone: softmax of the H'W'-averaged logits
    np.testing.assert_allclose(d["vanilla"], softmax(ref.mean((2, 3))), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("depth", [0, 1])
def test_frpa_holistic_branch_equals_numpy(depth, images):
    """Projection on the FR map flattened in PyTorch's NCHW order, then the classifier;
    BN1d in eval mode uses running statistics (set here to non-trivial values)."""
    m = _C.Model("resnet18", "fr+pa", proj_depth=depth, proj_width=24, input_size=64, seed=5)
    rng = np.random.default_rng(0)
    if depth:
        m.set("proj.1.running_mean", rng.standard_normal(24).astype(np.float32))
        m.set("proj.1.running_var", rng.uniform(0.5, 2, 24).astype(np.float32))
        m.set("proj.1.weight", rng.uniform(0.5, 2, 24).astype(np.float32))
        m.set("proj.1.bias", rng.standard_normal(24).astype(np.float32))
    d = m.forward(images)
    fmap = d["vanilla_map"].transpose(0, 3, 1, 2).reshape(len(images), -1).astype(np.float64)
    g = lambda name: m.get(name).astype(np.float64)
    assert g("proj.0.weight").shape == (24, K * 2 * 2)
    h = fmap @ g("proj.0.weight").T + g("proj.0.bias")
    if depth:
        h = (h - g("proj.1.running_mean")) / np.sqrt(g("proj.1.running_var") + 1e-5)
        h = np.maximum(h * g("proj.1.weight") + g("proj.1.bias"), 0)
        h = h @ g("proj.3.weight").T + g("proj.3.bias")
    logits = h @ g("cls.weight").T + g("cls.bias")
    np.testing.assert_allclose(d["vanilla"], softmax(logits), rtol=1e-3, atol=1e-6)


def test_param_names_of_the_heads():
    names = [t[0] for t in _C.Model("resnet18", "fr+pa", proj_depth=2, input_size=64).param_table()
             if t[5] == 1]
    assert names == ["fr.weight", "fr.bias", "proj.0.weight", "proj.0.bias",
                     "proj.1.weight", "proj.1.bias", "proj.1.running_mean", "proj.1.running_var",
                     "proj.3.weight", "proj.3.bias",
                     "proj.4.weight", "proj.4.bias", "proj.4.running_mean", "proj.4.running_var",
                     "proj.6.weight", "proj.6.bias", "cls.weight", "cls.bias"]
    bal = [t[0] for t in _C.Model("resnet18", "fr", input_size=64).param_table() if t[5] == 2]
    assert bal == ["balanced.fr.weight", "balanced.fr.bias"]


def kl_rows(p, q):
    tiny = np.finfo(np.float32).tiny  # as glae_kl_rows: probabilities clamped inside the logs
    return np.sum(p * (np.log(np.maximum(p, tiny)) - np.log(np.maximum(q, tiny))), axis=1)


def test_routing_picks_the_head_with_smaller_flip_kl(images):
    m = _C.Model("resnet18", "gap", input_size=64, seed=4)
    flipped = np.ascontiguousarray(images[:, :, ::-1])
    # the balanced head ignores the image: uniform, flip-invariant (KL 0) -> it wins
    m.set("balanced.fc.weight", np.zeros((K, 512), np.float32))
    m.set("balanced.fc.bias", np.zeros(K, np.float32))
    d, df = m.forward(images), m.forward(flipped)
    u1 = kl_rows(d["vanilla"].astype(np.float64), df["vanilla"])
    assert (u1 > 1e-6).all()
    age, prob, which, ups = m.predict(images, route="smaller", return_upsilon=True)
    np.testing.assert_allclose(ups[:, 0], u1, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(ups[:, 1], 0, atol=1e-6)
    np.testing.assert_array_equal(which, 1)
    np.testing.assert_allclose(prob, 1 / K, rtol=1e-5)
    np.testing.assert_allclose(age, 50, rtol=1e-4)
    # Table IX's ablation takes the bigger one: the vanilla head, flip-averaged
    age, prob, which = m.predict(images, route="bigger")
    np.testing.assert_array_equal(which, 0)
    np.testing.assert_allclose(prob, (d["vanilla"] + df["vanilla"]) / 2, rtol=1e-4, atol=1e-7)
    age, prob, which = m.predict(images, route="bigger", flip=False)
    np.testing.assert_allclose(prob, d["vanilla"], rtol=1e-5, atol=1e-7)
    # the other way round: a flip-invariant vanilla head wins
    m.copy_head_to_balanced()
    m.set("fc.weight", np.zeros((K, 512), np.float32))
    _, _, which = m.predict(images)
    np.testing.assert_array_equal(which, 0)
    # single-head predictions
    _, prob, which = m.predict(images, route="balanced", flip=False)
    np.testing.assert_array_equal(which, 1)
    np.testing.assert_allclose(prob, d["vanilla"], rtol=1e-5, atol=1e-7)  # the copied head


def test_copy_head_to_balanced(images):
    m = _C.Model("resnet18", "fr+pa", proj_depth=1, proj_width=16, input_size=64)
    d = m.forward(images)
    assert not np.allclose(d["vanilla"], d["balanced"])
    m.set("proj.1.running_var", np.full(16, 3.0, np.float32))
    m.copy_head_to_balanced()
    np.testing.assert_array_equal(m.get("balanced.proj.1.running_var"), 3.0)
    d = m.forward(images)
    np.testing.assert_array_equal(d["vanilla"], d["balanced"])
    a1, p1, _ = m.predict(images, route="vanilla")
    a2, p2, _ = m.predict(images, route="balanced")
    np.testing.assert_array_equal(p1, p2)


def test_stage2_trains_only_the_balanced_head(images):
    m = _C.Model("resnet18", "fr+pa", proj_depth=1, proj_width=16, input_size=64)
    ages = np.array([10.0, 40.0, 90.0], np.float32)
    m.copy_head_to_balanced()
    params0, buffers0 = m.params.copy(), m.buffers.copy()
    bb, hh, bl = m.group_range("backbone"), m.group_range("head"), m.group_range("balanced")
    nb_backbone = sum(t[3] for t in m.param_table() if t[4] and t[5] == 0)
    losses = m.train_step(images, ages, stage=2, loss="lae_cls", mae=3.0)
    assert set(losses) == {"total", "local", "holistic"}
    assert losses["total"] == pytest.approx(losses["local"] + losses["holistic"], rel=1e-5)
    g = m.grads
    assert not g[bb[0]:bb[1]].any() and not g[hh[0]:hh[1]].any()
    assert np.abs(g[bl[0]:bl[1]]).sum() > 0
    np.testing.assert_array_equal(m.params, params0)
    # backbone BN in eval mode: running statistics untouched; the head's BN1d updates its own
    np.testing.assert_array_equal(m.buffers[:nb_backbone], buffers0[:nb_backbone])
    # stage 1 trains backbone + vanilla head, not the balanced one
    m.zero_grad()
    m.train_step(images, ages, stage=1)
    assert np.abs(g[bb[0]:bb[1]]).sum() > 0 and np.abs(g[hh[0]:hh[1]]).sum() > 0
    assert not g[bl[0]:bl[1]].any()
    assert not np.array_equal(m.buffers[:nb_backbone], buffers0[:nb_backbone])


def test_loss_modes_and_sigma(images):
    m = _C.Model("resnet18", "gap", input_size=64, lam=0.0)
    ages = np.array([10.0, 40.0, 90.0], np.float32)
    # lam = 0: 'base' is the KL alone
    assert m.train_step(images, ages, loss="base")["total"] == pytest.approx(
        m.train_step(images, ages, loss="kl")["total"], rel=1e-5)
    m = _C.Model("resnet18", "gap", input_size=64)
    p = m.forward(images, training=True)["vanilla"].astype(np.float64)
    er = np.abs(p @ np.arange(K) - ages)
    kl = m.train_step(images, ages, loss="kl")["total"]
    base = m.train_step(images, ages, loss="base")["total"]
    assert base == pytest.approx(kl + er.mean(), rel=1e-4)
    cls = m.train_step(images, ages, loss="lae_cls", mae=2.0)["total"]
    assert cls == pytest.approx(kl + ((er - 2.0) ** 2).mean(), rel=1e-4)
    wide = m.train_step(images, ages, np.full(3, 3.0, np.float32), loss="kl")["total"]
    assert wide != pytest.approx(kl, rel=1e-3)
    # gradients accumulate (+=) until zero_grad
    m.zero_grad()
    m.train_step(images, ages)
    g1 = m.grads.copy()
    m.train_step(images, ages)
    np.testing.assert_allclose(m.grads, 2 * g1, rtol=1e-4, atol=1e-6)
    m.zero_grad()
    assert not m.grads.any()


def test_frpa_learns_random_data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
    ages = np.array([5.0, 30.0, 55.0, 80.0], np.float32)
    m = _C.Model("resnet18", "fr+pa", input_size=64, proj_width=64, seed=1)
    p, g = m.params, m.grads
    hist = []
    for step in range(8):
        m.zero_grad()
        hist.append(m.train_step(x, ages, loss="base")["total"])
        p -= 0.003 * g
    assert np.isfinite(hist).all()
    assert hist[-1] < 0.5 * hist[0], hist


def test_batch_shape_change_replans(images):
    m = _C.Model("resnet18", "gap", input_size=64)
    a = m.predict(images)[1]
    small = m.arena_bytes
    m.predict(np.zeros((8, 96, 96, 3), np.float32))
    assert m.arena_bytes > small
    np.testing.assert_array_equal(m.predict(images)[1], a)
    # another batch size: same numbers up to the GEMM's summation order
    np.testing.assert_allclose(m.predict(images[:2])[1], a[:2], rtol=1e-5, atol=1e-8)


def _distinct_heads(head, seed, rng):
    """A ResNet-18 glae.Model whose balanced head is the vanilla one plus noise, so the two
    heads answer differently and routing chooses per image."""
    import glae

    m = glae.Model(backbone="resnet18", head=head, image_size=64, seed=seed)
    m.core.copy_head_to_balanced()
    name = "balanced.fc.weight" if head == "gap" else "balanced.fr.weight"
    w = m.core.get(name)
    m.core.set(name, (w + rng.standard_normal(w.shape) * 0.05).astype(np.float32))
    return m


@pytest.mark.parametrize("flip", [True, False])
def test_evaluate_batch_routes_like_predict(images, flip):
    """The trainer's evaluation path (Model.evaluate_batch) routes with and without flip
    averaging, exactly as the C predict does (routing always needs the flipped image)."""
    m = _distinct_heads("gap", 4, np.random.default_rng(1))
    core = m.core
    for route in ("smaller", "bigger", "vanilla", "balanced"):
        r = m.evaluate_batch(images, route=route, flip=flip)
        age, _, head = core.predict(images, route=route, flip=flip)
        np.testing.assert_array_equal(r["head"], head)
        np.testing.assert_allclose(r["age"], age, rtol=1e-5, atol=1e-4)
    # a flip-invariant (uniform) balanced head always wins "smaller": not the vanilla answer
    core.set("balanced.fc.weight", np.zeros((K, 512), np.float32))
    core.set("balanced.fc.bias", np.zeros(K, np.float32))
    r = m.evaluate_batch(images, route="smaller", flip=flip)
    np.testing.assert_array_equal(r["head"], 1)
    np.testing.assert_allclose(r["age"], 50, rtol=1e-4)
    np.testing.assert_allclose(r["balanced_age"], 50, rtol=1e-4)
    assert not np.allclose(r["vanilla_age"], 50, atol=1e-3)
    r = m.evaluate_batch(images, route="bigger", flip=flip)
    np.testing.assert_array_equal(r["head"], 0)
    np.testing.assert_array_equal(r["age"], r["vanilla_age"])
    with pytest.raises(ValueError, match="route"):
        m.evaluate_batch(images, route="best")


@pytest.mark.parametrize("flip", [True, False])
def test_evaluate_batch_one_pass_matches_two_forwards(flip):
    """evaluate_batch runs the images and their flips as one batch of 2N (C predict with
    head_ages); its per-head ages equal two separate forwards and NumPy's flip average, and
    uint8 pixels give the same numbers as the float32 batch the loader normalises."""
    from glae.model import eval_augment

    rng = np.random.default_rng(2)
    m = _distinct_heads("fr", 5, rng)
    core = m.core
    pix = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    idx = np.arange(4, dtype=np.int64)
    aug = eval_augment(m.config)
    x = _C.augment_batch(pix, idx, 64, 0, 0, **aug)
    u = _C.augment_batch(pix, idx, 64, 0, 0, dtype="uint8", **aug)
    np.testing.assert_array_equal(u, pix)
    f, g = core.forward(x), core.forward(_C.hflip_forward(x))
    for route in ("smaller", "vanilla", "balanced"):
        r = m.evaluate_batch(x, route=route, flip=flip)
        for name, head in (("vanilla_age", "vanilla"), ("balanced_age", "balanced")):
            p = 0.5 * (f[head] + g[head]) if flip else f[head]
            want = (p * np.arange(K, dtype=np.float32)).sum(1)
            np.testing.assert_allclose(r[name], want, rtol=1e-5, atol=1e-4)
        assert not np.allclose(r["vanilla_age"], r["balanced_age"])
        ru = m.evaluate_batch(u, route=route, flip=flip)  # norm: the model's
        for k in r:
            np.testing.assert_array_equal(ru[k], r[k])
    with pytest.raises(ValueError, match="norm"):
        m.evaluate_batch(x, norm="glae")  # float32 is taken as already normalised


@pytest.mark.parametrize("shape", [(3, 50, 50, 3), (3, 32, 48, 3), (3, 64, 40, 3), (2, 32, 32, 3)])
def test_predict_batch_of_another_size_equals_list(shape):
    """A 4-D uint8 batch of any size gets the centre crop a list of the same images gets
    (a non-square batch used to be stretched to the square instead)."""
    import glae

    m = glae.Model(backbone="resnet18", head="gap", image_size=32, seed=3)
    batch = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    x_batch = assert_unmodified(m.preprocess, batch)
    np.testing.assert_array_equal(x_batch, m.preprocess(list(batch)))
    np.testing.assert_array_equal(m.predict(batch, flip=False), m.predict(list(batch), flip=False))
    _, h, w, _ = shape
    if h != w and min(h, w) == 32:  # no resize: the centre square cut by hand, exactly
        c = min(h, w)
        top, left = (h - c) // 2, (w - c) // 2
        sq = np.ascontiguousarray(batch[:, top:top + c, left:left + c])
        np.testing.assert_array_equal(x_batch, m.preprocess(sq))


# -- the FR and FR+PA heads' backward against central differences ---------------------------
FD_AGES = np.array([5.0, 30.0, 62.0, 90.0], np.float32)


def _fd_images():
    # 48 px: a 2 x 2 x 512 last map, so the pixel shuffle interleaves 4 source pixels
    return np.random.default_rng(11).standard_normal((4, 48, 48, 3)).astype(np.float32)


def check_head_gradients(m, loss, group, rng, n_dirs=2, n_elems=2):
    """Every parameter tensor of `group` (1 vanilla head, 2 balanced): the analytic gradient
    of loss() (m.grads after it) against central differences of the float32 model, along
    n_dirs random unit directions over the whole tensor (every element takes part) and on
    the n_elems elements of largest gradient. Returns the per-tensor worst errors."""
    loss()
    g = m.grads.copy()
    p = m.params
    gmax = np.abs(g).max()
    table = m.param_table()
    bn_layers = {t[0].rsplit(".", 1)[0] for t in table if t[0].endswith("running_mean")}
    report = {}
    for name, shape, off, numel, is_buf, grp, _nd in table:
        if grp != group or is_buf:
            continue
        x, gx = p[off:off + numel], g[off:off + numel].astype(np.float64)
        # step: ~0.2 x the tensor's typical entry (1e-2 for BN's weight/bias, whose entries
        # are 1 and 0); bigger steps meet the curvature, smaller ones float32's rounding
        is_bn = name.rsplit(".", 1)[0] in bn_layers
        eps = 1e-2 if is_bn else float(np.clip(0.2 * np.abs(x).mean(), 1e-3, 5e-3))
        gnorm = np.linalg.norm(gx)
        worst = 0.0
        for _ in range(n_dirs):
            v = rng.standard_normal(numel)
            v /= np.linalg.norm(v)
            x0 = x.copy()
            x[:] = x0 + eps * v
            fp = loss()
            x[:] = x0 - eps * v
            fm = loss()
            x[:] = x0
            num, ana = (fp - fm) / (2 * eps), float(gx @ v)
            if gnorm < 1e-5 * gmax:
                # e.g. a linear layer's bias before training-mode BN: exactly no gradient
                assert abs(num) < 2e-3 * gmax, (name, num, ana)
                continue
            err = abs(num - ana) / gnorm  # an error e in g shows as about |e| / |g|
            worst = max(worst, err)
            assert err < 2e-2, (name, "direction", num, ana, gnorm)
        if gnorm >= 1e-5 * gmax:
            idx = np.argsort(-np.abs(gx))[:n_elems]
            num = numeric_grad(loss, x, eps=eps, idx=idx)[idx]
            rel = np.abs(num - gx[idx]) / np.abs(gx[idx])
            worst = max(worst, rel.max())
            assert (rel < 3e-2).all(), (name, idx, num, gx[idx])
        report[name] = worst
    return report


@pytest.mark.parametrize("head,depth,rks", [("fr", 0, (4, 4, 4)), ("fr+pa", 0, (8, 10, 6)),
                                            ("fr+pa", 2, (8, 10, 6))])
def test_fr_heads_gradient_finite_differences(head, depth, rks):
    """Stage 1 (train_step, loss 'base': KL + L1 on both PA branches): the FR conv (k > s:
    overlapping windows), the projection with its BN1d and ReLU, and the classifier."""
    r, k, s = rks
    m = _C.Model("resnet18", head, r=r, k=k, s=s, proj_depth=depth, proj_width=12,
                 input_size=48, seed=1)
    x = _fd_images()

    def loss():
        m.zero_grad()
        return m.train_step(x, FD_AGES, loss="base")["total"]

    rep = check_head_gradients(m, loss, 1, np.random.default_rng(depth))
    want = {"fr.weight", "fr.bias"}
    if head == "fr+pa":
        want |= {"cls.weight", "cls.bias"} | {f"proj.{i}.{t}" for i in
                                               (0, 1, 3, 4, 6)[:1 + 2 * depth]
                                               for t in ("weight", "bias")}
    assert set(rep) == want


def test_frpa_stage2_gradient_finite_differences():
    """Stage 2 (LAE's KL + (L1 - mae)^2): only the balanced head has gradient, and it
    matches central differences; the vanilla head does not change the stage-2 loss."""
    m = _C.Model("resnet18", "fr+pa", r=8, k=10, s=6, proj_depth=1, proj_width=12,
                 input_size=48, seed=2)
    x = _fd_images()
    for _ in range(5):  # backbone BN running statistics nearer the data's (eval mode here)
        m.forward(x, training=True)
    m.copy_head_to_balanced()

    def loss():
        m.zero_grad()
        return m.train_step(x, FD_AGES, stage=2, loss="lae_cls", mae=3.0)["total"]

    l0 = loss()
    g = m.grads
    for grp in ("backbone", "head"):
        b, e = m.group_range(grp)
        assert not g[b:e].any(), grp
    b, e = m.group_range("balanced")
    assert np.abs(g[b:e]).sum() > 0
    p = m.params
    hb, he = m.group_range("head")
    p[hb:he] += 0.01  # the vanilla head is not in the stage-2 loss
    assert loss() == l0
    p[hb:he] -= 0.01
    rep = check_head_gradients(m, loss, 2, np.random.default_rng(5))
    assert set(rep) == {f"balanced.{n}" for n in (
        "fr.weight", "fr.bias", "proj.0.weight", "proj.0.bias", "proj.1.weight", "proj.1.bias",
        "proj.3.weight", "proj.3.bias", "cls.weight", "cls.bias")}
