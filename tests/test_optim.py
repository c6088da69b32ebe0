"""Fused SGD against a NumPy re-implementation of torch.optim.SGD's documented algorithm."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak


def torch_sgd_reference(p, buf, g, lr, momentum, dampening, wd, nesterov, first, decay_on):
    """torch.optim.SGD.step for one tensor, in float32 like PyTorch (docs: 'Algorithm')."""
    f = np.float32
    d = g.copy()
    if wd != 0:
        d = np.where(decay_on, g + f(wd) * p, g)
    if momentum != 0:
        if first:
            buf = d.copy()
        else:
            buf = f(momentum) * buf + f(1.0 - dampening) * d
        d = d + f(momentum) * buf if nesterov else buf
    return p - f(lr) * d, buf


CASES = [
    # momentum, dampening, wd, nesterov, masked
    (0.9, 0.0, 5e-4, True, False),
    (0.9, 0.0, 5e-4, True, True),
    (0.9, 0.0, 0.0, False, False),
    (0.85, 0.1, 1e-2, False, True),
    (0.0, 0.0, 5e-4, False, False),
]


@pytest.mark.parametrize("momentum,dampening,wd,nesterov,masked", CASES)
@pytest.mark.parametrize("n", [1, 37, 100_003])  # the last one crosses the OpenMP threshold
def test_matches_torch_algorithm_over_steps(momentum, dampening, wd, nesterov, masked, n, rng):
    p = rng.standard_normal(n).astype(np.float32)
    buf = np.zeros(n, np.float32)
    mask = (rng.random(n) < 0.3).astype(np.uint8) if masked else None
    decay_on = np.ones(n, bool) if mask is None else mask == 0
    rp, rbuf = p.copy(), buf.copy()
    for step in range(5):
        g = rng.standard_normal(n).astype(np.float32)
        lr = 0.05 / (step + 1)
        g_before = g.copy()
        _C.sgd_step(p, buf, g, lr, momentum=momentum, dampening=dampening, weight_decay=wd,
                    nesterov=nesterov, first_step=step == 0, no_decay_mask=mask)
        rp, rbuf = torch_sgd_reference(rp, rbuf, g, lr, momentum, dampening, wd, nesterov,
                                       step == 0, decay_on)
        np.testing.assert_array_equal(g, g_before)  # grads are read-only
        np.testing.assert_allclose(p, rp, rtol=1e-6, atol=1e-7)
        if momentum:
            np.testing.assert_allclose(buf, rbuf, rtol=1e-6, atol=1e-7)
    if momentum == 0:
        assert not buf.any()  # no buffer when momentum is 0, as in PyTorch


def test_first_step_sets_buffer_to_gradient(rng):
    """PyTorch clones d_p into the fresh buffer whatever the dampening."""
    p = rng.standard_normal(50).astype(np.float32)
    g = rng.standard_normal(50).astype(np.float32)
    buf = np.full(50, 123.0, np.float32)  # stale content must be ignored
    p0 = p.copy()
    _C.sgd_step(p, buf, g, 0.1, momentum=0.9, dampening=0.5, weight_decay=0.0, nesterov=False,
                first_step=True)
    np.testing.assert_array_equal(buf, g)
    np.testing.assert_allclose(p, p0 - np.float32(0.1) * g, rtol=1e-6)


def test_frozen_range_untouched_bitwise(rng):
    n, b, e = 1000, 300, 700
    p = rng.standard_normal(n).astype(np.float32)
    buf = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    p0, buf0 = p.copy(), buf.copy()
    _C.sgd_step(p, buf, g, 0.1, begin=b, end=e)
    for arr, ref in ((p, p0), (buf, buf0)):
        assert arr[:b].tobytes() == ref[:b].tobytes()
        assert arr[e:].tobytes() == ref[e:].tobytes()
    rp, rbuf = torch_sgd_reference(p0[b:e], buf0[b:e], g[b:e], 0.1, 0.9, 0.0, 5e-4, True, False,
                                   np.ones(e - b, bool))
    np.testing.assert_allclose(p[b:e], rp, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(buf[b:e], rbuf, rtol=1e-6, atol=1e-7)
    # an empty range is a no-op
    snap, bsnap = p.copy(), buf.copy()
    _C.sgd_step(p, buf, g, 0.1, begin=5, end=5)
    assert p.tobytes() == snap.tobytes() and buf.tobytes() == bsnap.tobytes()


def test_mask_excludes_decay_only(rng):
    """Masked elements get no weight decay, but still momentum and the gradient step."""
    n = 64
    p = rng.standard_normal(n).astype(np.float32)
    g = np.zeros(n, np.float32)
    buf = np.zeros(n, np.float32)
    mask = np.zeros(n, np.uint8)
    mask[::2] = 1
    p0 = p.copy()
    _C.sgd_step(p, buf, g, 0.1, weight_decay=0.1, first_step=True, no_decay_mask=mask)
    np.testing.assert_array_equal(p[::2], p0[::2])  # zero gradient, no decay: unchanged
    assert np.all(np.abs(p[1::2]) < np.abs(p0[1::2]))  # decayed towards 0
    # a boolean mask means the same
    p2, buf2 = p0.copy(), np.zeros(n, np.float32)
    _C.sgd_step(p2, buf2, g, 0.1, weight_decay=0.1, first_step=True, no_decay_mask=mask.astype(bool))
    np.testing.assert_array_equal(p2, p)


def test_multidimensional_buffers(rng):
    p = rng.standard_normal((4, 5)).astype(np.float32)
    buf = np.zeros((4, 5), np.float32)
    g = rng.standard_normal((4, 5)).astype(np.float32)
    rp, _ = torch_sgd_reference(p, buf, g, 0.01, 0.9, 0, 5e-4, True, True, np.ones((4, 5), bool))
    _C.sgd_step(p, buf, g, 0.01, first_step=True)
    np.testing.assert_allclose(p, rp, rtol=1e-6)


def test_no_reference_leaks():
    p, b, g = (np.ones(10, np.float32) for _ in range(3))
    m = np.zeros(10, np.uint8)
    assert_no_leak(lambda *a: _C.sgd_step(*a, 1e-3, no_decay_mask=m), p, b, g)


def test_bad_arguments():
    p = np.ones(10, np.float32)
    b = np.zeros(10, np.float32)
    g = np.ones(10, np.float32)
    with pytest.raises(TypeError, match="params must have dtype float32"):
        _C.sgd_step(p.astype(np.float64), b, g, 0.1)
    with pytest.raises(TypeError, match="params must be a numpy.ndarray"):
        _C.sgd_step([1.0], b, g, 0.1)
    with pytest.raises(TypeError, match="momentum_buf must have dtype float32"):
        _C.sgd_step(p, b.astype(np.float16), g, 0.1)
    with pytest.raises(TypeError, match="grads must have dtype float32"):
        _C.sgd_step(p, b, g.astype(np.int32), 0.1)
    with pytest.raises(ValueError, match="params and grads must have the same shape"):
        _C.sgd_step(p, b, np.ones(9, np.float32), 0.1)
    with pytest.raises(ValueError, match="params and momentum_buf must have the same shape"):
        _C.sgd_step(p, np.zeros(11, np.float32), g, 0.1)
    with pytest.raises(ValueError, match="params must be C-contiguous"):
        _C.sgd_step(np.ones(20, np.float32)[::2], b, g, 0.1)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="params must be writeable"):
        _C.sgd_step(ro, b, g, 0.1)
    with pytest.raises(ValueError, match="momentum_buf may be None only when momentum == 0"):
        _C.sgd_step(p, None, g, 0.1)
    _C.sgd_step(p, None, g, 0.1, momentum=0.0, nesterov=False)  # allowed
    with pytest.raises(ValueError, match="must not share memory"):
        _C.sgd_step(p, p, g, 0.1)
    with pytest.raises(ValueError, match="must not share memory"):
        _C.sgd_step(p, b, p, 0.1)
    with pytest.raises(ValueError, match="invalid learning rate"):
        _C.sgd_step(p, b, g, -0.1)
    with pytest.raises(ValueError, match="invalid learning rate"):
        _C.sgd_step(p, b, g, float("nan"))
    with pytest.raises(ValueError, match="invalid momentum"):
        _C.sgd_step(p, b, g, 0.1, momentum=-0.9, nesterov=False)
    with pytest.raises(ValueError, match="invalid weight_decay"):
        _C.sgd_step(p, b, g, 0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        _C.sgd_step(p, b, g, 0.1, dampening=0.1)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        _C.sgd_step(p, None, g, 0.1, momentum=0.0)
    with pytest.raises(ValueError, match="begin <= end <= params.size"):
        _C.sgd_step(p, b, g, 0.1, begin=-1)
    with pytest.raises(ValueError, match="begin <= end <= params.size"):
        _C.sgd_step(p, b, g, 0.1, begin=5, end=4)
    with pytest.raises(ValueError, match="begin <= end <= params.size"):
        _C.sgd_step(p, b, g, 0.1, end=11)
    with pytest.raises(TypeError, match="end must be an int"):
        _C.sgd_step(p, b, g, 0.1, end=4.0)
    with pytest.raises(TypeError, match="no_decay_mask must have dtype uint8"):
        _C.sgd_step(p, b, g, 0.1, no_decay_mask=np.zeros(10, np.int32))
    with pytest.raises(ValueError, match="params and no_decay_mask must have the same shape"):
        _C.sgd_step(p, b, g, 0.1, no_decay_mask=np.zeros(9, np.uint8))
    with pytest.raises(TypeError):
        _C.sgd_step(p, b, g)  # lr is required
