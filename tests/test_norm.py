"""Batch norm 2d (NHWC, channel last) against a float64 NumPy reference of PyTorch's
definition: biased variance to normalise, unbiased variance into running_var, momentum
update, eval with running statistics; backward through the batch statistics."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified, numeric_grad, sample_indices

SHAPES = [(2, 3, 4, 5), (4, 1, 1, 3), (1, 7, 5, 16), (3, 6, 6, 1), (37, 9)]
EPS = 1e-5


def ref_forward(x, g, b, rm, rv, mom, eps, training):
    """Returns y, save_mean, save_invstd, new running_mean, new running_var (float64)."""
    c = x.shape[-1]
    x2 = x.reshape(-1, c).astype(np.float64)
    if training:
        m = x2.shape[0]
        mean = x2.sum(0) / m
        var = ((x2 - mean) ** 2).sum(0) / m
        unbiased = ((x2 - mean) ** 2).sum(0) / (m - 1)
        rm = None if rm is None else (1 - mom) * rm + mom * mean
        rv = None if rv is None else (1 - mom) * rv + mom * unbiased
    else:
        mean, var = rm.astype(np.float64), rv.astype(np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x2 - mean) * invstd * g + b
    return y.reshape(x.shape), mean, invstd, rm, rv


def ref_backward(dy, x, mean, invstd, g, training):
    """Step-by-step chain rule (the textbook derivation), float64."""
    c = x.shape[-1]
    x2 = x.reshape(-1, c).astype(np.float64)
    d2 = dy.reshape(-1, c).astype(np.float64)
    m = x2.shape[0]
    xc = x2 - mean
    xhat = xc * invstd
    dgamma = (d2 * xhat).sum(0)
    dbeta = d2.sum(0)
    dxhat = d2 * g
    if not training:
        return (dxhat * invstd).reshape(x.shape), dgamma, dbeta
    var_eps = 1.0 / invstd**2
    dvar = (dxhat * xc).sum(0) * -0.5 * var_eps**-1.5
    dmean = (-dxhat * invstd).sum(0) + dvar * (-2.0 * xc).sum(0) / m
    dx = dxhat * invstd + dvar * 2.0 * xc / m + dmean / m
    return dx.reshape(x.shape), dgamma, dbeta


def params(c, rng):
    g = rng.uniform(0.5, 1.5, c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    return g, b


@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_backward(shape, rng):
    c = shape[-1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    g, b = params(c, rng)
    y, sm, si = assert_unmodified(
        lambda x, g, b: _C.batchnorm_forward(x, g, b, None, None, 0.1, EPS, True), x, g, b)
    ry, rmean, rinv, _, _ = ref_forward(x, g, b, None, None, 0.1, EPS, True)
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(sm, rmean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(si, rinv, rtol=1e-6)
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dg, db = assert_unmodified(
        lambda dy, x, sm, si, g: _C.batchnorm_backward(dy, x, sm, si, g, True), dy, x, sm, si, g)
    rdx, rdg, rdb = ref_backward(dy, x, rmean, rinv, g.astype(np.float64), True)
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dg, rdg, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db, rdb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_eval_forward_backward(shape, rng):
    c = shape[-1]
    x = rng.standard_normal(shape).astype(np.float32)
    g, b = params(c, rng)
    rm = rng.standard_normal(c).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, c).astype(np.float32)
    rm0, rv0 = rm.copy(), rv.copy()
    y, sm, si = _C.batchnorm_forward(x, g, b, rm, rv, 0.1, EPS, False)
    np.testing.assert_array_equal(rm, rm0)  # eval never touches the running statistics
    np.testing.assert_array_equal(rv, rv0)
    ry, rmean, rinv, _, _ = ref_forward(x, g, b, rm, rv, 0.1, EPS, False)
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sm, rm)
    np.testing.assert_allclose(si, 1 / np.sqrt(rv.astype(np.float64) + EPS), rtol=1e-6)
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dg, db = _C.batchnorm_backward(dy, x, sm, si, g, False)
    rdx, rdg, rdb = ref_backward(dy, x, rmean, rinv, g.astype(np.float64), False)
    np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dg, rdg, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db, rdb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mom", [0.1, 0.3])
def test_running_stats_over_several_calls(mom, rng):
    shape, c = (3, 4, 5, 6), 6
    g, b = params(c, rng)
    rm = np.zeros(c, np.float32)
    rv = np.ones(c, np.float32)
    ref_m, ref_v = rm.astype(np.float64), rv.astype(np.float64)
    for step in range(4):
        x = (rng.standard_normal(shape) * (1 + step) + step).astype(np.float32)
        y, _, _ = _C.batchnorm_forward(x, g, b, rm, rv, mom, EPS, True)  # in place
        ry, _, _, ref_m, ref_v = ref_forward(x, g, b, ref_m, ref_v, mom, EPS, True)
        np.testing.assert_allclose(y, ry, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(rm, ref_m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rv, ref_v, rtol=1e-5, atol=1e-6)
    # the unbiased variance really is used: with 2 rows var_unbiased = 2 * var_biased
    x = np.array([[0.0], [2.0]], np.float32)
    rm1, rv1 = np.zeros(1, np.float32), np.zeros(1, np.float32)
    _, sm, si = _C.batchnorm_forward(x, np.ones(1, np.float32), np.zeros(1, np.float32), rm1, rv1,
                                     1.0, 0.0, True)
    assert rm1[0] == 1.0 and rv1[0] == 2.0 and sm[0] == 1.0 and si[0] == 1.0
    # then eval uses what training stored
    y, sm, si = _C.batchnorm_forward(x, np.ones(1, np.float32), np.zeros(1, np.float32), rm1, rv1,
                                     1.0, 0.0, False)
    np.testing.assert_allclose(y.ravel(), [-1 / np.sqrt(2), 1 / np.sqrt(2)], rtol=1e-6)


def test_only_one_running_stat(rng):
    x = rng.standard_normal((5, 3)).astype(np.float32)
    g, b = params(3, rng)
    rv = np.ones(3, np.float32)
    _C.batchnorm_forward(x, g, b, None, rv, 0.1, EPS, True)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * x.astype(np.float64).var(0, ddof=1), rtol=1e-5)


def test_large_mean_is_stable(rng):
    # E[x^2] - E[x]^2 in float would lose everything here; two passes in double do not
    x = (1000.0 + rng.standard_normal((64, 8, 8, 4)) * 1e-2).astype(np.float32)
    g, b = params(4, rng)
    y, sm, si = _C.batchnorm_forward(x, g, b, None, None, 0.1, EPS, True)
    ry, rmean, rinv, _, _ = ref_forward(x, g, b, None, None, 0.1, EPS, True)
    np.testing.assert_allclose(si, rinv, rtol=1e-5)
    np.testing.assert_allclose(y, ry, rtol=1e-3, atol=2e-3)


def test_thread_count_does_not_change_results(rng):
    x = rng.standard_normal((8, 16, 16, 32)).astype(np.float32)  # large enough for OpenMP
    g, b = params(32, rng)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    nt = _C.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            _C.set_num_threads(t)
            y, sm, si = _C.batchnorm_forward(x, g, b, None, None, 0.1, EPS, True)
            outs.append((y, sm, si) + _C.batchnorm_backward(dy, x, sm, si, g, True))
    finally:
        _C.set_num_threads(nt)
    for a, b_ in zip(*outs):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("training", [True, False])
def test_finite_differences(training, rng):
    shape, c = (2, 3, 2, 3), 3
    x = rng.standard_normal(shape).astype(np.float32)
    g, b = params(c, rng)
    rm = rng.standard_normal(c).astype(np.float32) * 0.1
    rv = rng.uniform(0.5, 2.0, c).astype(np.float32)
    w = rng.standard_normal(shape)

    def loss():
        if training:
            y = _C.batchnorm_forward(x, g, b, None, None, 0.1, EPS, True)[0]
        else:
            y = _C.batchnorm_forward(x, g, b, rm, rv, 0.1, EPS, False)[0]
        return np.sum(w * y.astype(np.float64))

    _, sm, si = _C.batchnorm_forward(x, g, b, None if training else rm, None if training else rv,
                                     0.1, EPS, training)
    dx, dg, db = _C.batchnorm_backward(w.astype(np.float32), x, sm, si, g, training)
    np.testing.assert_allclose(dx, numeric_grad(loss, x, eps=1e-2), atol=2e-3, rtol=1e-2)
    np.testing.assert_allclose(dg, numeric_grad(loss, g, eps=1e-2), atol=2e-3, rtol=1e-2)
    np.testing.assert_allclose(db, numeric_grad(loss, b, eps=1e-2), atol=2e-3, rtol=1e-2)


def test_no_reference_leaks(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    g, b = params(3, rng)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    assert_no_leak(_C.batchnorm_forward, x, g, b, rm, rv, 0.1, EPS, True)
    assert_no_leak(_C.batchnorm_forward, x, g, b, None, None, 0.1, EPS, True)
    _, sm, si = _C.batchnorm_forward(x, g, b, None, None, 0.1, EPS, True)
    assert_no_leak(_C.batchnorm_backward, x, x, sm, si, g, True)


def test_bad_input():
    x = np.ones((4, 3), np.float32)
    x[0] = 0
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    fwd = _C.batchnorm_forward
    with pytest.raises(TypeError, match="x must have dtype float32"):
        fwd(x.astype(np.float64), g, b, rm, rv, 0.1, EPS, True)
    with pytest.raises(TypeError, match="running_var must have dtype float32"):
        fwd(x, g, b, rm, rv.astype(np.float64), 0.1, EPS, True)
    with pytest.raises(ValueError, match="x must have at least 2"):
        fwd(np.ones(3, np.float32), g, b, rm, rv, 0.1, EPS, True)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        fwd(np.ones((4, 6), np.float32)[:, ::2], g, b, rm, rv, 0.1, EPS, True)
    with pytest.raises(ValueError, match="gamma: dimension 0 must be 3"):
        fwd(x, np.ones(4, np.float32), b, rm, rv, 0.1, EPS, True)
    with pytest.raises(ValueError, match="beta: dimension 0 must be 3"):
        fwd(x, g, np.ones(2, np.float32), rm, rv, 0.1, EPS, True)
    with pytest.raises(ValueError, match="running_mean: dimension 0 must be 3"):
        fwd(x, g, b, np.zeros(5, np.float32), rv, 0.1, EPS, True)
    with pytest.raises(ValueError, match="required in eval mode"):
        fwd(x, g, b, None, None, 0.1, EPS, False)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fwd(np.ones((1, 1, 1, 3), np.float32), g, b, rm, rv, 0.1, EPS, True)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        fwd(x, g, b, rm, rv, 0.1, -1.0, True)
    ro = rm.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        fwd(x, g, b, ro, rv, 0.1, EPS, True)
    np.testing.assert_array_equal(rm, 0)  # failed calls leave running stats alone
    np.testing.assert_array_equal(rv, 1)
    bwd = _C.batchnorm_backward
    with pytest.raises(ValueError, match="dy and x must have the same shape"):
        bwd(np.ones((3, 3), np.float32), x, rm, rv, g, True)
    with pytest.raises(ValueError, match="save_invstd: dimension 0 must be 3"):
        bwd(x, x, rm, np.ones(2, np.float32), g, True)
    with pytest.raises(TypeError, match="save_mean must be a numpy.ndarray"):
        bwd(x, x, [0.0, 0, 0], rv, g, True)
