"""Label distributions and the fused LDL loss (LAE eqs. 1-4, GLAE eqs. 1-5, 7) against
float64 NumPy references written here, finite differences, and bad input."""
import numpy as np
import pytest

from glae import _C
from glae.losses import label_distribution

from helpers import assert_no_leak, assert_unmodified, numeric_grad

K = 101
MODES = ["base", "lae_cls", "kl"]


# ---- independent references (float64) ---------------------------------------------

def ref_label_distribution(y, sigma, k=K, normalize=True):
    y = np.asarray(y, np.float64)[:, None]
    s = np.broadcast_to(np.asarray(sigma, np.float64), y.shape[:1])[:, None]
    ks = np.arange(k, dtype=np.float64)[None, :]
    z = np.exp(-((ks - y) ** 2) / (2 * s**2)) / (np.sqrt(2 * np.pi) * s)
    return z / z.sum(1, keepdims=True) if normalize else z


def ref_loss(logits, z, y, group, mode, lam, mae):
    x = logits.astype(np.float64)
    zz = np.repeat(z.astype(np.float64), group, axis=0)
    yy = np.repeat(y.astype(np.float64), group)
    logp = x - x.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    p = np.exp(logp)
    safe = np.where(zz > 0, zz, 1.0)
    kl = np.sum(np.where(zz > 0, zz * (np.log(safe) - logp), 0.0), axis=1)
    er = np.abs(yy - p @ np.arange(x.shape[1]))
    if mode == "base":
        return kl + lam * er, p
    if mode == "lae_cls":
        return kl + (er - mae) ** 2, p
    return kl, p


def ref_grad(dloss, logits, z, y, group, mode, lam, mae):
    """Analytic gradient via the Jacobian of the softmax (a different route from the C code)."""
    x = logits.astype(np.float64)
    _, p = ref_loss(logits, z, y, group, mode, lam, mae)
    zz = np.repeat(z.astype(np.float64), group, axis=0)
    yy = np.repeat(y.astype(np.float64), group)
    ks = np.arange(x.shape[1], dtype=np.float64)
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        jac = np.diag(p[r]) - np.outer(p[r], p[r])       # d p_i / d x_j
        dl_dp = -zz[r] / p[r]                              # d KL / d p
        if mode != "kl":
            e = p[r] @ ks - yy[r]
            d_er = np.sign(e) * ks                          # d |y - yhat| / d p
            dl_dp = dl_dp + (lam * d_er if mode == "base" else 2 * (abs(e) - mae) * d_er)
        out[r] = dloss[r] * (dl_dp @ jac)
    return out


def make_case(rng, n, group, k=K, margin=2.0):
    """Random logits and targets with |y - yhat| > margin for every row (away from the L1 kink)."""
    logits = (2.0 * rng.standard_normal((n * group, k))).astype(np.float32)
    _, p = ref_loss(logits, np.zeros((n, k), np.float32), np.zeros(n, np.float32), group, "kl", 0, 0)
    yhat = (p @ np.arange(k)).reshape(n, group)
    y = np.empty(n, np.float32)
    for i in range(n):
        while True:
            cand = np.float32(rng.uniform(0, k - 1))
            if np.all(np.abs(yhat[i] - cand) > margin):
                y[i] = cand
                break
    sigma = rng.uniform(0.5, 4.0, n).astype(np.float32)
    z = ref_label_distribution(y, sigma, k).astype(np.float32)
    return logits, z, y


# ---- label distribution -----------------------------------------------------------

def test_label_distribution_normalised_rows(rng):
    y = np.array([0, 0.3, 1, 17.5, 50, 99.9, 100], np.float32)
    sigma = rng.uniform(0.2, 10, y.size).astype(np.float32)
    z = assert_unmodified(_C.label_distribution, y, sigma)
    assert z.shape == (y.size, K) and z.dtype == np.float32
    np.testing.assert_allclose(z.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(z, ref_label_distribution(y, sigma), rtol=2e-5, atol=1e-7)
    # scalar sigma and the keyword form
    z1 = _C.label_distribution(y, 3.0, num_classes=K, normalize=True)
    np.testing.assert_allclose(z1, ref_label_distribution(y, 3.0), rtol=2e-5, atol=1e-7)


def test_label_distribution_unnormalised_matches_formula(rng):
    y = rng.uniform(0, 100, 9).astype(np.float32)
    for sigma in (1.0, rng.uniform(0.5, 8, 9).astype(np.float32)):
        z = _C.label_distribution(y, sigma, K, False)
        np.testing.assert_allclose(z, ref_label_distribution(y, sigma, normalize=False),
                                   rtol=2e-5, atol=1e-12)
    # at the ends of the range half the Gaussian falls outside 0..100: the literal
    # density sums to ~0.5, which is why normalising is the default
    z = _C.label_distribution(np.array([0, 100], np.float32), 1.0, K, False)
    np.testing.assert_allclose(z.sum(1), 0.5 + 1 / np.sqrt(2 * np.pi) / 2, rtol=1e-3)


def test_label_distribution_extreme_sigma():
    # tiny sigma between two ages: every unshifted exponent underflows; still a distribution
    z = _C.label_distribution(np.array([50.5, 50.4, 100], np.float32), 1e-3)
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(z.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(z[0, 50], 0.5, rtol=1e-6)
    assert z[1, 50] == 1.0 and z[2, 100] == 1.0
    # huge sigma: nearly uniform
    z = _C.label_distribution(np.array([30.0], np.float32), 1e6)
    np.testing.assert_allclose(z, 1.0 / K, rtol=1e-4)


def test_label_distribution_other_k_and_empty():
    z = _C.label_distribution(np.array([0, 2, 4], np.float32), 1.0, num_classes=5)
    np.testing.assert_allclose(z, ref_label_distribution([0, 2, 4], 1.0, 5), rtol=2e-5)
    assert _C.label_distribution(np.zeros(0, np.float32), 1.0).shape == (0, K)


def test_python_label_distribution():
    z = label_distribution([3, 40.5, 100])
    assert z.shape == (3, K) and z.dtype == np.float32
    np.testing.assert_allclose(z, ref_label_distribution([3, 40.5, 100], 1.0), rtol=2e-5, atol=1e-7)
    z = label_distribution(np.array([1, 2], np.int64), sigma=[1.0, 2.0], normalize=False)
    np.testing.assert_allclose(z, ref_label_distribution([1, 2], [1.0, 2.0], normalize=False),
                               rtol=2e-5, atol=1e-12)
    z = label_distribution(7.0, sigma=2, num_classes=11)
    assert z.shape == (11,)
    np.testing.assert_allclose(z, ref_label_distribution([7.0], 2.0, 11)[0], rtol=2e-5)


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(ages=[-1]), ValueError, r"ages must lie in \[0, 100\].*ages\[0\] = -1"),
    (dict(ages=[5, 101]), ValueError, r"ages\[1\] = 101"),
    (dict(ages=[5, 10], num_classes=10), ValueError, r"\[0, 9\]"),
    (dict(ages=[np.nan]), ValueError, "ages must be finite"),
    (dict(ages=[[1, 2]]), ValueError, "ages must be a number or 1-D"),
    (dict(ages=["a"]), TypeError, "ages must be real numbers"),
    (dict(ages=[True]), TypeError, "ages must be real numbers"),
    (dict(ages=[1], sigma=0), ValueError, "sigma must be finite and > 0"),
    (dict(ages=[1], sigma=-2.0), ValueError, "sigma must be finite and > 0"),
    (dict(ages=[1, 2], sigma=[1.0, -1.0]), ValueError, r"sigma\[1\] = -1"),
    (dict(ages=[1, 2], sigma=[1.0]), ValueError, "one value per age"),
    (dict(ages=[1], sigma=1e-50), ValueError, "not a finite value > 0 in float32"),
    (dict(ages=[1, 2], sigma=[1.0, 1e300]), ValueError, r"sigma\[1\] = 1e\+300 is not a finite value"),
    (dict(ages=[1], num_classes=0), ValueError, "num_classes must be >= 1"),
    (dict(ages=[1], num_classes=2.5), TypeError, "num_classes must be an integer"),
])
def test_python_label_distribution_bad_input(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        label_distribution(**kwargs)


def test_label_distribution_bad_input_binding():
    y = np.array([1, 2], np.float32)
    with pytest.raises(TypeError, match="y must have dtype float32"):
        _C.label_distribution(y.astype(np.float64), 1.0)
    with pytest.raises(ValueError, match="y must have 1 dimensions"):
        _C.label_distribution(y[None], 1.0)
    with pytest.raises(ValueError, match="sigma: dimension 0 must be 2"):
        _C.label_distribution(y, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="sigma must be a float"):
        _C.label_distribution(y, "1")
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        _C.label_distribution(y, -1.0)
    with pytest.raises(ValueError, match=r"sigma\[1\] = 0"):
        _C.label_distribution(y, np.array([1, 0], np.float32))
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        _C.label_distribution(y, 1.0, 0)
    with pytest.raises(ValueError, match=r"age y\[1\] = 2 is outside \[0, 1\]"):
        _C.label_distribution(y, 1.0, 2)
    with pytest.raises(ValueError, match=r"age y\[0\] = nan"):
        _C.label_distribution(np.array([np.nan], np.float32), 1.0)


# ---- fused loss ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("group", [1, 4])
def test_loss_matches_numpy(mode, group, rng):
    logits, z, y = make_case(rng, 5, group)
    loss, prob = assert_unmodified(
        lambda a, b, c: _C.ldl_loss_forward(a, b, c, group=group, mode=mode, lambda_=0.7, mae=3.0),
        logits, z, y)
    want, p = ref_loss(logits, z, y, group, mode, 0.7, 3.0)
    assert loss.shape == (5 * group,) and prob.shape == logits.shape
    np.testing.assert_allclose(prob, p, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-5)
    dloss = rng.standard_normal(loss.shape).astype(np.float32)
    g = assert_unmodified(
        lambda a, b, c, d: _C.ldl_loss_backward(a, b, c, d, group, mode, 0.7, 3.0),
        dloss, prob, z, y)
    np.testing.assert_allclose(g, ref_grad(dloss, logits, z, y, group, mode, 0.7, 3.0),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_loss_finite_differences(mode, rng):
    group, k = 2, 21
    logits, z, y = make_case(rng, 2, group, k=k, margin=1.0)
    w = rng.uniform(0.5, 1.5, logits.shape[0])
    f = lambda: np.sum(w * _C.ldl_loss_forward(logits, z, y, group, mode, 0.5, 2.0)[0].astype(np.float64))
    num = numeric_grad(f, logits, eps=1e-2)
    _, prob = _C.ldl_loss_forward(logits, z, y, group, mode, 0.5, 2.0)
    ana = _C.ldl_loss_backward(w.astype(np.float32), prob, z, y, group, mode, 0.5, 2.0)
    np.testing.assert_allclose(ana, num, atol=2e-3, rtol=1e-2)


def test_unnormalised_target_gradient(rng):
    # with sum(z) != 1 the KL gradient is S p - z, not p - z
    logits, _, y = make_case(rng, 3, 1, k=K)
    z = ref_label_distribution(y, 1.0, normalize=False).astype(np.float32)
    z[0] *= 0.5
    loss, prob = _C.ldl_loss_forward(logits, z, y, mode="base")
    np.testing.assert_allclose(loss, ref_loss(logits, z, y, 1, "base", 1.0, 0.0)[0], rtol=1e-5)
    d = np.ones(3, np.float32)
    np.testing.assert_allclose(_C.ldl_loss_backward(d, prob, z, y, mode="base"),
                               ref_grad(d, logits, z, y, 1, "base", 1.0, 0.0), rtol=1e-4, atol=1e-6)


def test_l1_derivative_at_zero_is_zero():
    # K = 2, equal logits: p = (0.5, 0.5) and y_hat = 0.5 = y exactly
    logits = np.zeros((1, 2), np.float32)
    z = np.array([[0.25, 0.75]], np.float32)
    y = np.array([0.5], np.float32)
    for mode in ("base", "lae_cls"):
        loss, prob = _C.ldl_loss_forward(logits, z, y, mode=mode, lambda_=3.0, mae=1.0)
        g = _C.ldl_loss_backward(np.ones(1, np.float32), prob, z, y, mode=mode, lambda_=3.0, mae=1.0)
        np.testing.assert_allclose(g, prob - z, atol=1e-7)   # only the KL part
    kl = 0.25 * np.log(0.5) + 0.75 * np.log(1.5)
    np.testing.assert_allclose(_C.ldl_loss_forward(logits, z, y, mode="lae_cls", mae=1.0)[0], kl + 1.0,
                               rtol=1e-6)


def test_zero_target_entries_and_extreme_logits():
    # 0 log 0 = 0; logits of +-80 must not overflow (log-softmax inside)
    logits = np.array([[80.0, -80.0, 0.0], [-80.0, 80.0, 79.0]], np.float32)
    z = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], np.float32)
    y = np.array([0.0, 1.5], np.float32)
    loss, prob = _C.ldl_loss_forward(logits, z, y, mode="kl")
    want, p = ref_loss(logits, z, y, 1, "kl", 0, 0)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(prob))
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)


def test_local_branch_size_parallel_path(rng):
    # N * 7 * 7 rows as in the local branch of PA (GLAE eq. 7): takes the OpenMP path
    logits, z, y = make_case(rng, 32, 49, margin=0.0)
    loss, prob = _C.ldl_loss_forward(logits, z, y, 49)
    want, p = ref_loss(logits, z, y, 49, "base", 1.0, 0.0)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-5)
    d = np.full(loss.shape, 1.0 / loss.size, np.float32)
    g = _C.ldl_loss_backward(d, prob, z, y, 49)
    np.testing.assert_allclose(g[:98], ref_grad(d[:98], logits[:98], z[:2], y[:2], 49, "base", 1.0, 0.0),
                               rtol=1e-4, atol=1e-8)


def test_empty_rows():
    e = np.zeros((0, K), np.float32)
    loss, prob = _C.ldl_loss_forward(e, e, np.zeros(0, np.float32), 3)
    assert loss.shape == (0,) and prob.shape == (0, K)
    assert _C.ldl_loss_backward(np.zeros(0, np.float32), e, e, np.zeros(0, np.float32), 3).shape == (0, K)


def test_loss_no_reference_leaks(rng):
    logits, z, y = make_case(rng, 2, 2, margin=0.0)
    loss, prob = _C.ldl_loss_forward(logits, z, y, 2)
    assert_no_leak(_C.ldl_loss_forward, logits, z, y, 2, "lae_cls")
    assert_no_leak(_C.ldl_loss_backward, loss, prob, z, y, 2, "base")
    assert_no_leak(_C.label_distribution, y, 1.0)
    sig = np.ones_like(y)
    assert_no_leak(_C.label_distribution, y, sig)
    assert_no_leak(label_distribution, y, sig)


def test_loss_bad_input(rng):
    logits, z, y = make_case(rng, 2, 3, margin=0.0)
    f, b = _C.ldl_loss_forward, _C.ldl_loss_backward
    d = np.ones(6, np.float32)
    with pytest.raises(TypeError, match="logits must have dtype float32"):
        f(logits.astype(np.float64), z, y, 3)
    with pytest.raises(TypeError, match="z must have dtype float32"):
        f(logits, z.astype(np.float16), y, 3)
    with pytest.raises(TypeError, match="y must be a numpy.ndarray"):
        f(logits, z, [1.0, 2.0], 3)
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        f(logits.reshape(-1), z, y, 3)
    with pytest.raises(ValueError, match="y must have 1 dimensions"):
        f(logits, z, y[:, None], 3)
    with pytest.raises(ValueError, match="logits must be C-contiguous"):
        f(np.asfortranarray(logits), z, y, 3)
    with pytest.raises(ValueError, match=r"rows \(6\) must be divisible by group \(4\)"):
        f(logits, z, y, 4)
    with pytest.raises(ValueError, match="group must be >= 1"):
        f(logits, z, y, 0)
    with pytest.raises(ValueError, match="z must have rows / group = 2 rows, got 3"):
        f(logits, np.vstack([z, z[:1]]), y, 3)
    with pytest.raises(ValueError, match="y must have rows / group = 2 elements, got 1"):
        f(logits, z, y[:1].copy(), 3)
    with pytest.raises(ValueError, match="z must have 101 classes like logits, got 100"):
        f(logits, np.ascontiguousarray(z[:, :100]), y, 3)
    with pytest.raises(ValueError, match="mode must be 'base', 'lae_cls' or 'kl', got 'mse'"):
        f(logits, z, y, 3, "mse")
    with pytest.raises(ValueError, match="mode must be"):
        b(d, logits, z, y, 3, "l2")
    with pytest.raises(ValueError, match="lambda must be finite"):
        f(logits, z, y, 3, "base", float("nan"))
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        f(logits, -z, y, 3)
    with pytest.raises(ValueError, match=r"y\[1\] is not finite"):
        f(logits, z, np.array([1, np.inf], np.float32), 3)
    with pytest.raises(ValueError, match="dloss: dimension 0 must be 6"):
        b(d[:5].copy(), logits, z, y, 3)
    with pytest.raises(ValueError, match="prob rows .* divisible by group"):
        b(d, logits, z, y, 5)
    with pytest.raises(ValueError, match="z must have 101 classes like prob"):
        b(d, logits, np.ascontiguousarray(z[:, :7]), y, 3)
    with pytest.raises(ValueError, match="at least one class"):
        f(np.zeros((3, 0), np.float32), np.zeros((1, 0), np.float32), y[:1].copy(), 3)
