"""Ghost batch norm (the papers' per-GPU statistics on one device): batch norm over
consecutive groups of rows, against the float64 NumPy reference of test_norm.py applied to
each group; the running statistics follow group 0; finite differences; bad input; and the
model's bn_batch (the backbone's BN over groups of images)."""
import numpy as np
import pytest

from glae import _C

from helpers import numeric_grad
from test_norm import EPS, params, ref_backward, ref_forward

# (shape, group_rows): even groups, a shorter last group, one group, groups of images (H*W rows)
CASES = [((12, 5), 4), ((11, 3), 4), ((6, 2), 6), ((6, 2), 100), ((4, 3, 2, 8), 12),
         ((5, 2, 2, 4), 8)]


def ref_ghost(x, g, b, rm, rv, group_rows, training):
    c = x.shape[-1]
    x2 = x.reshape(-1, c)
    ys, means, invs = [], [], []
    new_rm, new_rv = rm, rv
    for k, r0 in enumerate(range(0, x2.shape[0], group_rows)):
        feed = k == 0 or not training
        y, m, i, nrm, nrv = ref_forward(x2[r0:r0 + group_rows], g, b, rm if feed else None,
                                        rv if feed else None, 0.1, EPS, training)
        if k == 0:
            new_rm, new_rv = nrm, nrv
        ys.append(y)
        means.append(m)
        invs.append(i)
    return np.concatenate(ys).reshape(x.shape), np.stack(means), np.stack(invs), new_rm, new_rv


@pytest.mark.parametrize("shape,group_rows", CASES)
def test_forward_backward_against_reference(shape, group_rows, rng, dev):
    c = shape[-1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    g, b = params(c, rng)
    rm0 = rng.standard_normal(c).astype(np.float32) * 0.1
    rv0 = rng.uniform(0.5, 2.0, c).astype(np.float32)
    rm, rv = rm0.copy(), rv0.copy()
    y, sm, si = _C.batchnorm_ghost_forward(x, g, b, rm, rv, group_rows, 0.1, EPS, True, ctx=dev)
    ry, rmean, rinv, rrm, rrv = ref_ghost(x, g, b, rm0.astype(np.float64), rv0.astype(np.float64),
                                          group_rows, True)
    groups = -(-x.reshape(-1, c).shape[0] // group_rows)
    assert sm.shape == si.shape == (groups, c)
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(sm, rmean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(si, rinv, rtol=1e-5)
    np.testing.assert_allclose(rm, rrm, rtol=1e-6, atol=1e-6)  # group 0's statistics
    np.testing.assert_allclose(rv, rrv, rtol=1e-5)
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dg, db = _C.batchnorm_ghost_backward(dy, x, sm, si, g, group_rows, True, ctx=dev)
    x2, d2 = x.reshape(-1, c), dy.reshape(-1, c)
    rdx, rdg, rdb = [], 0, 0
    for k, r0 in enumerate(range(0, x2.shape[0], group_rows)):
        a, bg, bb = ref_backward(d2[r0:r0 + group_rows], x2[r0:r0 + group_rows], rmean[k],
                                 rinv[k], g.astype(np.float64), True)
        rdx.append(a)
        rdg, rdb = rdg + bg, rdb + bb
    np.testing.assert_allclose(dx, np.concatenate(rdx).reshape(shape), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(dg, rdg, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(db, rdb, rtol=1e-5, atol=2e-5)


def test_one_group_is_the_plain_op_bitwise(rng, dev):
    x = rng.standard_normal((4, 3, 3, 8)).astype(np.float32)
    g, b = params(8, rng)
    y1, m1, i1 = _C.batchnorm_forward(x, g, b, None, None, 0.1, EPS, True, ctx=dev)
    y2, m2, i2 = _C.batchnorm_ghost_forward(x, g, b, None, None, x.size // 8, 0.1, EPS, True,
                                            ctx=dev)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(m1, m2[0])
    dy = rng.standard_normal(x.shape).astype(np.float32)
    a = _C.batchnorm_backward(dy, x, m1, i1, g, True, ctx=dev)
    b_ = _C.batchnorm_ghost_backward(dy, x, m2, i2, g, x.size // 8, True, ctx=dev)
    for u, v in zip(a, b_):
        np.testing.assert_array_equal(u, v)


def test_eval_uses_running_statistics_in_every_group(rng, dev):
    x = rng.standard_normal((9, 4)).astype(np.float32)
    g, b = params(4, rng)
    rm = rng.standard_normal(4).astype(np.float32)
    rv = rng.uniform(0.5, 2, 4).astype(np.float32)
    y, sm, si = _C.batchnorm_ghost_forward(x, g, b, rm, rv, 4, 0.1, EPS, False, ctx=dev)
    ry = _C.batchnorm_forward(x, g, b, rm, rv, 0.1, EPS, False, ctx=dev)[0]
    np.testing.assert_array_equal(y, ry)
    assert sm.shape == (3, 4) and np.all(sm == sm[0])


def test_finite_differences(rng):
    shape, c, gr = (3, 2, 2, 3), 3, 8  # two groups of 2 images and one of 1 image (4 rows)
    x = rng.standard_normal(shape).astype(np.float32)
    g, b = params(c, rng)
    w = rng.standard_normal(shape)

    def loss():
        y = _C.batchnorm_ghost_forward(x, g, b, None, None, gr, 0.1, EPS, True)[0]
        return np.sum(w * y.astype(np.float64))

    _, sm, si = _C.batchnorm_ghost_forward(x, g, b, None, None, gr, 0.1, EPS, True)
    dx, dg, db = _C.batchnorm_ghost_backward(w.astype(np.float32), x, sm, si, g, gr, True)
    np.testing.assert_allclose(dx, numeric_grad(loss, x, eps=1e-2), atol=2e-3, rtol=1e-2)
    np.testing.assert_allclose(dg, numeric_grad(loss, g, eps=1e-2), atol=2e-3, rtol=1e-2)
    np.testing.assert_allclose(db, numeric_grad(loss, b, eps=1e-2), atol=2e-3, rtol=1e-2)


def test_poisoned_outputs_are_written(rng):
    # the bindings poison fresh outputs under test (glae_new_array): any unwritten group shows
    x = rng.standard_normal((11, 3)).astype(np.float32)
    g, b = params(3, rng)
    y, sm, si = _C.batchnorm_ghost_forward(x, g, b, None, None, 3, 0.1, EPS, True)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(sm)) and np.all(np.isfinite(si))
    dx, dg, db = _C.batchnorm_ghost_backward(x, x, sm, si, g, 3, True)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dg)) and np.all(np.isfinite(db))


def test_bad_input():
    x = np.arange(18, dtype=np.float32).reshape(9, 2)
    g, b = np.ones(2, np.float32), np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="group_rows"):
        _C.batchnorm_ghost_forward(x, g, b, None, None, 0, 0.1, EPS, True)
    with pytest.raises(ValueError, match="last group would have 1 row"):
        _C.batchnorm_ghost_forward(x, g, b, None, None, 4, 0.1, EPS, True)
    with pytest.raises(ValueError, match="more than 1 value"):
        _C.batchnorm_ghost_forward(x, g, b, None, None, 1, 0.1, EPS, True)
    _, sm, si = _C.batchnorm_ghost_forward(x, g, b, None, None, 3, 0.1, EPS, True)
    with pytest.raises(ValueError, match="save_mean"):
        _C.batchnorm_ghost_backward(x, x, sm[:2], si, g, 3, True)


def _tiny_model(bn_batch=0, math="fp32"):
    m = _C.Model(backbone="resnet18", head="fr+pa", input_size=64, seed=3, math=math)
    m.bn_batch = bn_batch
    return m


def _grads(m, x, ages):
    m.zero_grad()
    losses = m.train_step(x, ages, None, stage=1, norm="glae")
    return losses, m.grads.copy(), m.buffers.copy()


def test_model_bn_batch_equals_separate_batches_statistics(rng):
    """bn_batch = 2 on a batch of 4: every BN of the backbone normalises each pair of images
    with the pair's statistics, so each pair's features equal those of a model run on
    that pair alone (the head's BN-free layers act per image)."""
    x = rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
    whole = _tiny_model(2)
    a, b = _tiny_model(0), _tiny_model(0)
    pa = a.forward(x[:2], training=True)
    pb = b.forward(x[2:], training=True)
    pw = whole.forward(x, training=True)
    for key in pw:
        if isinstance(pw[key], np.ndarray) and pw[key].shape[:1] == (4,):
            np.testing.assert_allclose(pw[key][:2], pa[key], rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(pw[key][2:], pb[key], rtol=1e-3, atol=1e-4)
    # running statistics: group 0's, i.e. those of the model that saw the first pair
    np.testing.assert_allclose(whole.buffers, a.buffers, rtol=1e-5, atol=1e-6)


def test_model_bn_batch_zero_and_whole_batch_are_bitwise_the_default(rng):
    x = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    ages = rng.uniform(5, 80, 4).astype(np.float32)
    ref = _grads(_tiny_model(0), x, ages)
    for k in (4, 9):  # a group as large as the batch, or larger: one group
        got = _grads(_tiny_model(k), x, ages)
        np.testing.assert_array_equal(ref[1], got[1])
        np.testing.assert_array_equal(ref[2], got[2])


@pytest.mark.parametrize("math", ["fp32", "bf16"])
def test_model_bn_batch_changes_the_step(rng, math):
    x = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    ages = rng.uniform(5, 80, 4).astype(np.float32)
    l0, g0, _ = _grads(_tiny_model(0, math), x, ages)
    l2, g2, _ = _grads(_tiny_model(2, math), x, ages)
    assert np.all(np.isfinite(g2)) and not np.array_equal(g0, g2)
    with pytest.raises(ValueError, match="bn_batch"):
        _tiny_model(0).bn_batch = -1
    m = _tiny_model(3, math)  # 4 = 3 + 1: a last group of one image
    with pytest.raises(ValueError, match="1 image"):
        m.train_step(x, ages, None, stage=1, norm="glae")


def test_effnet_refuses_bn_batch():
    """Ghost BN is wired into the ResNet walk only: an EfficientNetV2 model says so rather
    than silently training on whole-batch statistics."""
    import glae

    m = _C.Model("efficientnet_v2_s", "gap", input_size=32)
    with pytest.raises(ValueError, match="ResNet backbones only"):
        m.bn_batch = 4
    m.bn_batch = 0  # the whole batch: what it does anyway
    with pytest.raises(ValueError, match="ResNet backbones only"):
        glae.Config(backbone="efficientnet_v2_s", bn_batch=32).validate()
