"""The AM-softmax (CosFace) loss op (csrc/ops/amsoftmax.c and its CUDA twin) on every
backend (`dev`), against a float64 NumPy reference written here; the reference gradient
(through the Jacobians of the two L2 normalisations, a different route from the C code)
checked by float64 central differences, the kernels' own gradient by float32 differences
of their forward; poisoned outputs (conftest) and bad input."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified, numeric_grad


# ---- independent reference (float64) ------------------------------------------------

def ref_forward(x, labels, w, s=30.0, m=0.35):
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    xh = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    wh = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    cos = xh @ wh.T
    onehot = np.zeros_like(cos)
    onehot[np.arange(len(x)), labels] = 1.0
    z = s * (cos - m * onehot)
    zmax = z.max(1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(1)) + zmax[:, 0]
    loss = lse - z[np.arange(len(x)), labels]
    prob = np.exp(z - lse[:, None])
    return loss, prob, cos


def ref_backward(dloss, x, labels, w, s=30.0, m=0.35):
    """dL/dx and dL/dw with L = sum_i dloss_i loss_i: dL/dz = dloss (p - onehot), then
    dz/dcos = s, then cos = xh . wh through d xh / dx = (I - xh xh^T) / |x|."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    _, p, _ = ref_forward(x, labels, w, s, m)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(x)), labels] = 1.0
    g = s * dloss.astype(np.float64)[:, None] * (p - onehot)  # dL/dcos
    nx = np.linalg.norm(x, axis=1)
    nw = np.linalg.norm(w, axis=1)
    xh, wh = x / nx[:, None], w / nw[:, None]
    dxh, dwh = g @ wh, g.T @ xh
    dx = np.stack([(np.eye(x.shape[1]) - np.outer(a, a)) @ v / n for a, v, n in zip(xh, dxh, nx)])
    dw = np.stack([(np.eye(w.shape[1]) - np.outer(a, a)) @ v / n for a, v, n in zip(wh, dwh, nw)])
    return dx, dw


def make_case(rng, n, d, k):
    x = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.5, 3.0)
    w = rng.standard_normal((k, d)).astype(np.float32) * 0.1
    labels = rng.integers(0, k, n).astype(np.int32)
    return x, labels, w


SHAPES = [(1, 1, 1), (3, 5, 2), (7, 16, 11), (33, 64, 130)]


# ---- forward ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, d, k", SHAPES)
@pytest.mark.parametrize("s, m", [(30.0, 0.35), (1.0, 0.0), (64.0, 1.5)])
def test_forward_matches_reference(dev, rng, n, d, k, s, m):
    x, labels, w = make_case(rng, n, d, k)
    loss, prob, cos = assert_unmodified(lambda a, b, c: _C.amsoftmax_forward(a, b, c, s, m, ctx=dev),
                                        x, labels, w)
    assert loss.shape == (n,) and prob.shape == cos.shape == (n, k)
    assert loss.dtype == prob.dtype == cos.dtype == np.float32
    rl, rp, rc = ref_forward(x, labels, w, s, m)
    np.testing.assert_allclose(cos, rc, rtol=0, atol=2e-6)
    np.testing.assert_allclose(prob, rp, rtol=0, atol=2e-5 * max(s, 1.0) / 30 + 1e-6)
    np.testing.assert_allclose(loss, rl, rtol=1e-5, atol=1e-5 * s)
    np.testing.assert_allclose(prob.sum(1), 1.0, rtol=1e-5)


def test_defaults_are_the_am_softmax_papers(rng):
    x, labels, w = make_case(rng, 4, 8, 5)
    loss, _, _ = _C.amsoftmax_forward(x, labels, w)
    np.testing.assert_allclose(loss, ref_forward(x, labels, w, 30.0, 0.35)[0], rtol=1e-5, atol=3e-4)


def test_margin_raises_the_loss_and_scale_sharpens(dev, rng):
    x, labels, w = make_case(rng, 16, 12, 9)
    l0 = _C.amsoftmax_forward(x, labels, w, 10.0, 0.0, ctx=dev)[0]
    l1 = _C.amsoftmax_forward(x, labels, w, 10.0, 0.35, ctx=dev)[0]
    assert np.all(l1 > l0)
    # m = 0: a softmax over s * cosine; the loss does not depend on the rows' lengths
    l2 = _C.amsoftmax_forward(x * 7.5, labels, w * 0.01, 10.0, 0.0, ctx=dev)[0]
    np.testing.assert_allclose(l2, l0, rtol=1e-5, atol=1e-5)


def test_large_scale_is_stable(dev):
    # s = 1000 with the true class aligned: huge logits must neither overflow nor give NaN
    w = np.eye(4, dtype=np.float32)
    x = np.array([[1, 0, 0, 0], [0, 0, 0, 2]], np.float32)
    labels = np.array([0, 3], np.int32)
    loss, prob, _ = _C.amsoftmax_forward(x, labels, w, 1000.0, 0.35, ctx=dev)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(prob))
    # margined true cosine 0.65 vs 0 for the others: -log p = log(1 + 3 exp(-650)) ~ 0
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)
    # the wrong class: loss ~ s * (1 + m)
    loss = _C.amsoftmax_forward(x, np.array([1, 1], np.int32), w, 1000.0, 0.35, ctx=dev)[0]
    np.testing.assert_allclose(loss, 1000.0 * 1.35, rtol=1e-5)


def test_empty_batch(dev):
    w = np.ones((3, 4), np.float32)
    loss, prob, cos = _C.amsoftmax_forward(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), w,
                                           ctx=dev)
    assert loss.shape == (0,) and prob.shape == cos.shape == (0, 3)
    dx, dw = _C.amsoftmax_backward(np.zeros(0, np.float32), prob, cos, np.zeros((0, 4), np.float32),
                                   np.zeros(0, np.int32), w, ctx=dev)
    assert dx.shape == (0, 4)
    np.testing.assert_array_equal(dw, 0.0)


# ---- backward ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, d, k", SHAPES)
def test_backward_matches_reference(dev, rng, n, d, k):
    x, labels, w = make_case(rng, n, d, k)
    s, m = 16.0, 0.35
    dloss = rng.uniform(0.2, 1.0, n).astype(np.float32)
    _, prob, cos = _C.amsoftmax_forward(x, labels, w, s, m, ctx=dev)
    dx, dw = assert_unmodified(
        lambda *a: _C.amsoftmax_backward(*a, s=s, ctx=dev), dloss, prob, cos, x, labels, w)
    rdx, rdw = ref_backward(dloss, x, labels, w, s, m)
    for got, want in ((dx, rdx), (dw, rdw)):
        assert got.dtype == np.float32 and got.shape == want.shape
        scale = np.abs(want).max() + 1e-30
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * scale)


def test_reference_gradient_is_the_finite_differences(rng):
    """The float64 reference's analytic gradient against float64 central differences of
    the reference loss, so the C kernels are compared with something checked."""
    x, labels, w = make_case(rng, 5, 6, 4)
    x, w = x.astype(np.float64), w.astype(np.float64)
    dloss = rng.uniform(0.2, 1.0, 5)
    s, m = 8.0, 0.35
    f = lambda: float(dloss @ ref_forward(x, labels, w, s, m)[0])
    rdx, rdw = ref_backward(dloss, x, labels, w, s, m)
    np.testing.assert_allclose(numeric_grad(f, x, eps=1e-6), rdx, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(numeric_grad(f, w, eps=1e-6), rdw, rtol=1e-6, atol=1e-8)


def test_kernel_gradient_is_the_finite_differences_of_its_forward(dev, rng):
    """Central differences of the op's own float32 forward (a small scale keeps the
    float32 loss smooth enough at eps = 1e-2)."""
    x, labels, w = make_case(rng, 6, 5, 4)
    w *= 10.0  # norms near 1, so eps is small against them
    s, m = 4.0, 0.35
    dloss = rng.uniform(0.2, 1.0, 6).astype(np.float32)
    f = lambda: float(dloss.astype(np.float64) @ _C.amsoftmax_forward(x, labels, w, s, m, ctx=dev)[0])
    _, prob, cos = _C.amsoftmax_forward(x, labels, w, s, m, ctx=dev)
    dx, dw = _C.amsoftmax_backward(dloss, prob, cos, x, labels, w, s, ctx=dev)
    np.testing.assert_allclose(numeric_grad(f, x, eps=1e-2), dx, rtol=3e-2, atol=3e-3)
    np.testing.assert_allclose(numeric_grad(f, w, eps=1e-2), dw, rtol=3e-2, atol=3e-3)


def test_gradients_are_tangent(dev, rng):
    """Scaling a row does not change the loss, so each row's gradient is orthogonal to the
    row itself (both for the embeddings and for the class weights)."""
    x, labels, w = make_case(rng, 9, 7, 5)
    _, prob, cos = _C.amsoftmax_forward(x, labels, w, ctx=dev)
    dx, dw = _C.amsoftmax_backward(np.full(9, 1 / 9, np.float32), prob, cos, x, labels, w, ctx=dev)
    rel = lambda g, v: np.abs((g * v).sum(1)) / (np.linalg.norm(g, axis=1) * np.linalg.norm(v, axis=1) + 1e-30)
    assert rel(dx, x).max() < 1e-4 and rel(dw, w).max() < 1e-4


def test_loss_falls_under_gradient_descent(dev, rng):
    """A few plain gradient steps on the embeddings and the class weights: the mean loss
    falls and the true class becomes the most similar one."""
    x, labels, w = make_case(rng, 24, 8, 4)
    first = None
    for _ in range(60):
        loss, prob, cos = _C.amsoftmax_forward(x, labels, w, 10.0, 0.2, ctx=dev)
        first = loss.mean() if first is None else first
        dx, dw = _C.amsoftmax_backward(np.full(24, 1 / 24, np.float32), prob, cos, x, labels, w,
                                       10.0, ctx=dev)
        x = (x - 5.0 * dx).astype(np.float32)
        w = (w - 0.5 * dw).astype(np.float32)
    assert loss.mean() < 0.3 * first
    assert np.mean(cos.argmax(1) == labels) == 1.0


# ---- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(m=-0.1), ValueError, r"margin m must be finite and >= 0, got -0\.1"),
    (dict(m=float("nan")), ValueError, "margin m must be finite"),
    (dict(m=2.0), ValueError, "degenerate"),
    (dict(s=0.0), ValueError, r"scale s must be finite and > 0, got 0"),
    (dict(s=-1.0), ValueError, "scale s must be finite and > 0"),
    (dict(s=float("inf")), ValueError, "scale s must be finite"),
    (dict(labels=np.array([0, 4], np.int32)), ValueError, r"labels\[1\] = 4 is outside \[0, 4\)"),
    (dict(labels=np.array([-1, 0], np.int32)), ValueError, r"labels\[0\] = -1"),
    (dict(labels=np.array([0, 1], np.int64)), TypeError, "labels must have dtype int32"),
    (dict(labels=np.array([0], np.int32)), ValueError, "labels: dimension 0 must be 2"),
    (dict(w=np.ones((4, 3), np.float32)), ValueError, "w must have the embedding's 5 columns"),
    (dict(w=np.ones((0, 5), np.float32)), ValueError, "at least one class"),
    (dict(x=np.ones((2, 5), np.float64)), TypeError, "x must have dtype float32"),
    (dict(x=np.ones(5, np.float32)), ValueError, "x must have 2 dimensions"),
])
def test_forward_bad_input(dev, kwargs, exc, msg):
    args = dict(x=np.ones((2, 5), np.float32), labels=np.array([0, 1], np.int32),
                w=np.ones((4, 5), np.float32), ctx=dev)
    args.update(kwargs)
    with pytest.raises(exc, match=msg):
        _C.amsoftmax_forward(**args)


def test_backward_bad_input(dev, rng):
    x, labels, w = make_case(rng, 3, 4, 5)
    _, prob, cos = _C.amsoftmax_forward(x, labels, w)
    dl = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"labels\[2\] = 5 is outside"):
        _C.amsoftmax_backward(dl, prob, cos, x, np.array([0, 1, 5], np.int32), w, ctx=dev)
    with pytest.raises(ValueError, match="scale s must be finite and > 0"):
        _C.amsoftmax_backward(dl, prob, cos, x, labels, w, s=0.0, ctx=dev)
    with pytest.raises(ValueError, match="prob: dimension 1 must be 5"):
        _C.amsoftmax_backward(dl, prob[:, :4].copy(), cos, x, labels, w, ctx=dev)
    with pytest.raises(ValueError, match="prob and cos must have the same shape"):
        _C.amsoftmax_backward(dl, prob, cos[:, :4].copy(), x, labels, w, ctx=dev)
    with pytest.raises(ValueError, match="dloss: dimension 0 must be 3"):
        _C.amsoftmax_backward(dl[:2].copy(), prob, cos, x, labels, w, ctx=dev)


def test_no_leak(rng):
    x, labels, w = make_case(rng, 4, 6, 3)
    _, prob, cos = _C.amsoftmax_forward(x, labels, w)
    dl = np.ones(4, np.float32)
    assert_no_leak(_C.amsoftmax_forward, x, labels, w)
    assert_no_leak(_C.amsoftmax_backward, dl, prob, cos, x, labels, w)
