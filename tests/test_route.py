"""Expected age (GLAE eq. 3), row-wise KL and Adaptive Routing (GLAE eq. 11, Algorithm 1
lines 24-30, V-A flip averaging) against float64 NumPy references and constructed cases."""
import numpy as np
import pytest

from glae import _C

from helpers import assert_no_leak, assert_unmodified

K = 101


TINY = float(np.finfo(np.float32).tiny)  # probabilities count at least this inside the logs


def ref_kl(p, q):
    p = p.astype(np.float64)
    q = q.astype(np.float64)
    t = np.where(p > 0, p * (np.log(np.maximum(p, TINY)) - np.log(np.maximum(q, TINY))), 0.0)
    return t.sum(-1)


def ref_route(pv, pvf, pb, pbf, mode="smaller", flip_average=True):
    u1, u2 = ref_kl(pv, pvf), ref_kl(pb, pbf)
    van = u1 < u2 if mode == "smaller" else u1 > u2
    a = np.where(van[:, None], pv, pb).astype(np.float64)
    b = np.where(van[:, None], pvf, pbf).astype(np.float64)
    prob = 0.5 * (a + b) if flip_average else a
    return prob, prob @ np.arange(pv.shape[1]), np.where(van, 0, 1), np.stack([u1, u2], 1)


def softmax_rows(rng, n, k=K, scale=2.0):
    x = scale * rng.standard_normal((n, k))
    e = np.exp(x - x.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def near(rng, p, eps):
    """A distribution close to p (KL grows with eps)."""
    q = p * np.exp(eps * rng.standard_normal(p.shape))
    return (q / q.sum(1, keepdims=True)).astype(np.float32)


def test_expected_age(rng):
    p = softmax_rows(rng, 7)
    age = assert_unmodified(_C.expected_age, p)
    np.testing.assert_allclose(age, p.astype(np.float64) @ np.arange(K), rtol=1e-6)
    onehot = np.eye(K, dtype=np.float32)[[0, 37, 100]]
    np.testing.assert_array_equal(_C.expected_age(onehot), [0, 37, 100])
    big = softmax_rows(rng, 700)   # parallel path
    np.testing.assert_allclose(_C.expected_age(big), big.astype(np.float64) @ np.arange(K), rtol=1e-6)
    assert _C.expected_age(np.zeros((0, K), np.float32)).shape == (0,)


def test_kl_rows(rng):
    p, q = softmax_rows(rng, 6), softmax_rows(rng, 6)
    p[0, :50] = 0                                   # 0 log 0 = 0
    p[0] /= p[0].sum()
    out = assert_unmodified(_C.kl_rows, p, q)
    np.testing.assert_allclose(out, ref_kl(p, q), rtol=1e-5)
    assert np.all(out >= 0)
    np.testing.assert_allclose(_C.kl_rows(p, p), 0, atol=1e-6)
    # p > 0 where q = 0: q counts as FLT_MIN (large, finite); q = 0 where p = 0: no contribution
    p2 = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], np.float32)
    q2 = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]], np.float32)
    out = _C.kl_rows(p2, q2)
    np.testing.assert_allclose(out[0], 0.5 * np.log(0.5) + 0.5 * (np.log(0.5) - np.log(TINY)),
                               rtol=1e-6)
    np.testing.assert_allclose(out[1], 0.5 * np.log(2), rtol=1e-6)
    # a subnormal q and a q flushed to 0 (as ONNX Runtime does) give the same divergence
    q3 = np.array([[1.0, 1e-41, 0.0]], np.float32)
    q4 = np.array([[1.0, 0.0, 0.0]], np.float32)
    assert _C.kl_rows(p2[:1], q3)[0] == _C.kl_rows(p2[:1], q4)[0]


@pytest.mark.parametrize("mode", ["smaller", "bigger"])
@pytest.mark.parametrize("flip_average", [True, False])
def test_route_matches_numpy(mode, flip_average, rng):
    n = 40
    pv, pb = softmax_rows(rng, n), softmax_rows(rng, n)
    pvf = near(rng, pv, rng.uniform(0.05, 1.0, (n, 1)))
    pbf = near(rng, pb, rng.uniform(0.05, 1.0, (n, 1)))
    r = assert_unmodified(lambda a, b, c, d: _C.adaptive_route(a, b, c, d, mode, flip_average),
                          pv, pvf, pb, pbf)
    prob, age, choice, ups = ref_route(pv, pvf, pb, pbf, mode, flip_average)
    assert set(r) == {"prob", "age", "choice", "upsilon"}
    assert r["choice"].dtype == np.int32 and r["upsilon"].shape == (n, 2)
    np.testing.assert_allclose(r["upsilon"], ups, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(r["choice"], choice)
    assert 0 < choice.sum() < n                     # both heads used
    np.testing.assert_allclose(r["prob"], prob, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(r["age"], age, rtol=1e-5)


def test_route_constructed_cases(rng):
    pv, pb = softmax_rows(rng, 2), softmax_rows(rng, 2)
    stable_v, shaky_v = near(rng, pv, 0.01), near(rng, pv, 1.0)
    stable_b, shaky_b = near(rng, pb, 0.01), near(rng, pb, 1.0)
    # row 0: vanilla agrees with its flip, balanced does not -> vanilla; row 1: the reverse
    pvf = np.stack([stable_v[0], shaky_v[1]])
    pbf = np.stack([shaky_b[0], stable_b[1]])
    r = _C.adaptive_route(pv, pvf, pb, pbf)
    np.testing.assert_array_equal(r["choice"], [0, 1])
    np.testing.assert_allclose(r["prob"][0], 0.5 * (pv[0] + pvf[0]), rtol=1e-6)
    np.testing.assert_allclose(r["prob"][1], 0.5 * (pb[1] + pbf[1]), rtol=1e-6)
    np.testing.assert_allclose(r["age"], r["prob"].astype(np.float64) @ np.arange(K), rtol=1e-6)
    # "bigger" (Table IX ablation) picks the other head
    rb = _C.adaptive_route(pv, pvf, pb, pbf, mode="bigger")
    np.testing.assert_array_equal(rb["choice"], [1, 0])
    np.testing.assert_array_equal(rb["upsilon"], r["upsilon"])
    # no flip averaging: the chosen head's unflipped distribution
    r0 = _C.adaptive_route(pv, pvf, pb, pbf, flip_average=False)
    np.testing.assert_array_equal(r0["prob"], np.stack([pv[0], pb[1]]))


def test_route_ties_go_to_balanced(rng):
    # Algorithm 1: vanilla only if Upsilon_1 < Upsilon_2 (bigger: only if >); a tie is balanced
    pv, pb = softmax_rows(rng, 3), softmax_rows(rng, 3)
    for mode in ("smaller", "bigger"):
        r = _C.adaptive_route(pv, pv, pb, pb, mode)       # both Upsilons exactly 0
        np.testing.assert_array_equal(r["upsilon"], 0)
        np.testing.assert_array_equal(r["choice"], 1)
        np.testing.assert_array_equal(r["prob"], pb)
    r = _C.adaptive_route(pv, pb, pv, pb)                 # identical heads: equal Upsilons > 0
    assert np.all(r["upsilon"][:, 0] == r["upsilon"][:, 1]) and np.all(r["upsilon"] > 0)
    np.testing.assert_array_equal(r["choice"], 1)


def test_route_kl_direction():
    # Upsilon = KL(p || p_flip), not KL(p_flip || p): the two differ here
    p = np.array([[0.9, 0.1, 0.0]], np.float32)
    pf = np.array([[0.5, 0.25, 0.25]], np.float32)
    r = _C.adaptive_route(p, pf, pf, p)       # Upsilon_2 = KL(pf || p): p_2 = 0, clamped
    np.testing.assert_allclose(r["upsilon"][0, 0], 0.9 * np.log(1.8) + 0.1 * np.log(0.4), rtol=1e-6)
    np.testing.assert_allclose(r["upsilon"][0, 1], ref_kl(pf, p)[0], rtol=1e-6)
    assert r["upsilon"][0, 1] > 20
    assert r["choice"][0] == 0


def test_route_no_reference_leaks(rng):
    p = softmax_rows(rng, 3)
    assert_no_leak(_C.adaptive_route, p, p, p, p)
    assert_no_leak(_C.expected_age, p)
    assert_no_leak(_C.kl_rows, p, p)


def test_route_bad_input(rng):
    p = softmax_rows(rng, 3)
    with pytest.raises(TypeError, match="p_bal must have dtype float32"):
        _C.adaptive_route(p, p, p.astype(np.float64), p)
    with pytest.raises(ValueError, match="p_van must have 2 dimensions"):
        _C.adaptive_route(p[0].copy(), p, p, p)
    with pytest.raises(ValueError, match="p_van and p_bal_flip must have the same shape"):
        _C.adaptive_route(p, p, p, p[:2].copy())
    with pytest.raises(ValueError, match="p_van and p_van_flip must have the same shape"):
        _C.adaptive_route(p, np.ascontiguousarray(p[:, :100]), p, p)
    with pytest.raises(ValueError, match="mode must be 'smaller' or 'bigger', got 'max'"):
        _C.adaptive_route(p, p, p, p, "max")
    neg = p.copy()
    neg[1, 5] = -0.1
    with pytest.raises(ValueError, match=r"p_bal_flip\[1, 5\] = -0.1; probabilities must be finite"):
        _C.adaptive_route(p, p, p, neg)
    nan = p.copy()
    nan[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"p_van\[2, 0\] = nan"):
        _C.adaptive_route(nan, p, p, p)
    with pytest.raises(ValueError, match=r"q\[1, 5\]"):
        _C.kl_rows(p, neg)
    with pytest.raises(ValueError, match="p and q must have the same shape"):
        _C.kl_rows(p, p[:2].copy())
    with pytest.raises(TypeError, match="p must have dtype float32"):
        _C.expected_age(p.astype(np.float64))
    with pytest.raises(ValueError, match="p must have 2 dimensions"):
        _C.expected_age(p.reshape(-1))
    with pytest.raises(ValueError, match="p must be C-contiguous"):
        _C.expected_age(p[:, ::2])
    with pytest.raises(ValueError, match="at least one class"):
        _C.expected_age(np.zeros((2, 0), np.float32))


# ---- route_select: routing criteria beyond eq. 11 (issue 19) ---------------------------

def ref_select(pv, pvf, pb, pbf, criterion, a=0.0, b=0.0, flip_average=True):
    """float64 NumPy reference of route_select (ops/route.h)."""
    ages = np.arange(pv.shape[1])
    qv = (0.5 * (pv.astype(np.float64) + pvf) if flip_average else pv.astype(np.float64))
    qb = (0.5 * (pb.astype(np.float64) + pbf) if flip_average else pb.astype(np.float64))
    if criterion == "kl_margin":
        score = ref_kl(pv, pvf) - ref_kl(pb, pbf)
        bal = ~(score < a)
    elif criterion == "confidence":
        score = qv.max(1)
        bal = score < a
    elif criterion == "entropy":
        score = -(np.where(qv > 0, qv * np.log(np.maximum(qv, TINY)), 0.0)).sum(1)
        bal = score > a
    elif criterion == "age":
        score = qv @ ages
        bal = (score < a) | (score > b)
    else:
        score = np.full(len(pv), a)
        bal = np.full(len(pv), a >= 0.5)
    w = np.full(len(pv), a) if criterion == "blend" else bal.astype(np.float64)
    prob = (1 - w[:, None]) * qv + w[:, None] * qb
    return prob, prob @ ages, bal.astype(np.int32), score


@pytest.mark.parametrize("criterion,a,b", [("kl_margin", 0.0, 0.0), ("kl_margin", 0.03, 0.0),
                                           ("confidence", 0.4, 0.0), ("entropy", 2.2, 0.0),
                                           ("age", 42.0, 58.0), ("blend", 0.3, 0.0),
                                           ("blend", 1.0, 0.0)])
@pytest.mark.parametrize("flip_average", [True, False])
def test_route_select_matches_numpy(criterion, a, b, flip_average, rng, dev):
    n = 300
    pv, pb = softmax_rows(rng, n, scale=3.0), softmax_rows(rng, n, scale=3.0)
    pvf, pbf = near(rng, pv, 0.5), near(rng, pb, 0.5)
    got = assert_unmodified(lambda *p: _C.route_select(*p, criterion, a, b, flip_average,
                                                        ctx=dev), pv, pvf, pb, pbf)
    prob, age, choice, score = ref_select(pv, pvf, pb, pbf, criterion, a, b, flip_average)
    # decisions on a knife edge (score within float rounding of the threshold) may differ
    edge = np.abs(score - a) < 1e-5
    if criterion == "age":
        edge |= np.abs(score - b) < 1e-4
    assert 0 < choice.mean() < 1 or criterion == "blend"  # both heads are exercised
    np.testing.assert_array_equal(got["choice"][~edge], choice[~edge])
    ok = ~edge
    np.testing.assert_allclose(got["score"], score, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["prob"][ok], prob[ok], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["age"][ok], age[ok], rtol=1e-5, atol=1e-4)


def test_route_select_kl_margin_zero_is_eq11(rng):
    """a = 0 is Adaptive Routing's "smaller" exactly, ties to the balanced head included."""
    pv, pb = softmax_rows(rng, 200), softmax_rows(rng, 200)
    pvf, pbf = near(rng, pv, 0.3), near(rng, pb, 0.3)
    pbf[:20], pb[:20], pvf[:20] = pvf[:20], pv[:20], pvf[:20]  # ties: Upsilon_1 == Upsilon_2
    r = _C.adaptive_route(pv, pvf, pb, pbf, "smaller")
    s = _C.route_select(pv, pvf, pb, pbf, "kl_margin", 0.0)
    np.testing.assert_array_equal(s["choice"], r["choice"])
    assert s["choice"][:20].all()
    np.testing.assert_array_equal(s["prob"], r["prob"])
    np.testing.assert_allclose(s["score"], r["upsilon"][:, 0] - r["upsilon"][:, 1], atol=1e-6)


def test_route_select_age_gate_constructed():
    """A one-hot vanilla distribution at age 10, 40 and 80: the [18, 65] gate keeps the
    vanilla head for 40 and sends the others to the balanced head (one-hot at 30)."""
    pv = np.zeros((3, K), np.float32)
    pv[[0, 1, 2], [10, 40, 80]] = 1
    pb = np.zeros((3, K), np.float32)
    pb[:, 30] = 1
    r = _C.route_select(pv, pv, pb, pb, "age", 18, 65)
    np.testing.assert_array_equal(r["choice"], [1, 0, 1])
    np.testing.assert_array_equal(r["age"], [30, 40, 30])
    np.testing.assert_array_equal(r["score"], [10, 40, 80])


def test_route_select_bad_input(rng):
    pv = softmax_rows(rng, 4)
    with pytest.raises(ValueError, match="criterion"):
        _C.route_select(pv, pv, pv, pv, "smallest")
    with pytest.raises(ValueError, match="blend weight"):
        _C.route_select(pv, pv, pv, pv, "blend", 1.5)
    with pytest.raises(ValueError, match="finite"):
        _C.route_select(pv, pv, pv, pv, "age", float("nan"), 60.0)
    bad = pv.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="p_bal_flip"):
        _C.route_select(pv, pv, pv, bad, "confidence", 0.1)
    with pytest.raises(ValueError):
        _C.route_select(pv, pv, pv, pv[:3], "confidence", 0.1)
