"""Evaluation metrics (glae.metrics -> csrc/metrics): hand-worked examples, independent
NumPy references on random data, empty groups, bad input, inputs unmodified, refcounts."""
import math

import numpy as np
import pytest

from glae import _C
from glae import metrics as M

from helpers import assert_no_leak, assert_unmodified

f32 = lambda *v: np.array(v, np.float32)  # noqa: E731


# ----------------------------------------------------------------------------------------
# NumPy references (independent of the C code; float64 on the float32 values)

def ref_age(y):
    return np.floor(np.asarray(y, np.float64) + 0.5).astype(np.int64)  # round half up


def ref_err(y, yhat):
    return np.abs(np.asarray(y, np.float64) - np.asarray(yhat, np.float64))


def ref_cmae(y, yhat):
    a, e = ref_age(y), ref_err(y, yhat)
    return np.mean([e[a == k].mean() for k in np.unique(a)])


def ref_aar(y, yhat, groups):
    a, e = ref_age(y), ref_err(y, yhat)
    a = np.clip(a, groups[0][0], groups[-1][1])  # outside the table: nearest end group
    m = e.mean()
    gm = [e[(a >= lo) & (a <= hi)].mean() if np.any((a >= lo) & (a <= hi)) else None
          for lo, hi in groups]
    present = [g for g in gm if g is not None]
    sigma = math.sqrt(sum((g - m) ** 2 for g in present) / len(present))
    return max(0, 7 - m) + max(0, 3 - sigma), m, sigma, gm


def ref_group(y, yhat, edges):
    a, e = ref_age(y), ref_err(y, yhat)
    out = []
    for lo, hi in edges:
        sel = (a >= lo) & (a <= hi)
        if not sel.any():
            out.append(None)
            continue
        ages = np.unique(a[sel])
        out.append((e[sel].mean(), np.mean([e[a == k].mean() for k in ages]), sel.sum(), len(ages)))
    return out


def ref_shot(y, yhat, train, many=100, few=20):
    a, e, t = ref_age(y), ref_err(y, yhat), ref_age(train)
    buckets = {"many": [], "medium": [], "few": []}
    for k in np.unique(a):
        c = np.sum(t == k)
        s = "many" if c > many else "few" if c < few else "medium"
        buckets[s].append(e[a == k])
    return {s: (np.concatenate(v).mean(), np.mean([x.mean() for x in v]),
                sum(len(x) for x in v), len(v)) if v else None
            for s, v in buckets.items()}


def random_case(seed, n=500):
    rng = np.random.default_rng(seed)
    if seed % 2:  # many exact halves: exercises the rounding rule
        y = rng.integers(0, 201, n) / 2.0
    else:  # long-tailed: few children and elderly
        y = np.clip(rng.normal(35, 15, n), 0, 100)
    yhat = y + rng.normal(0, 4, n)
    return y.astype(np.float32), yhat.astype(np.float32), rng


SEEDS = [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------------------
# hand-worked examples

# (true, predicted) pairs used for both AAR variants; every value is exact in float32
AAR_CASE = [
    (5, 8),          # |e| = 3, age 5
    (0.25, 2.25),    # |e| = 2, rounds to age 0
    (15, 14),        # 1
    (25, 25),        # 0
    (30.25, 31.25),  # 1, rounds to 30
    (35, 37),        # 2
    (30.5, 30.5),    # 0, rounds half up to 31
    (45, 45),        # 0
    (55, 56),        # 1
    (65, 61),        # 4
    (90, 84),        # 6, age 90
    (75, 75),        # 0
]


def test_aar_lae_by_hand():
    y, yhat = (np.array(v, np.float32) for v in zip(*AAR_CASE))
    # MAE = (3+2+1+0+1+2+0+0+1+4+6+0) / 12 = 20/12 = 5/3.
    # LAE Table 1 groups; age 0 goes to 1-10 and age 90 to 71-81 (nearest end group):
    #   1-10 : ages 5, 0        errors 3, 2   MAE^1 = 2.5
    #   11-20: 15               1             MAE^2 = 1
    #   21-30: 25, 30 (30.25)   0, 1          MAE^3 = 0.5
    #   31-40: 35, 31 (30.5)    2, 0          MAE^4 = 1
    #   41-50: 45               0             MAE^5 = 0
    #   51-60: 55               1             MAE^6 = 1
    #   61-70: 65               4             MAE^7 = 4
    #   71-81: 90, 75           6, 0          MAE^8 = 3
    # (MAE^j - 5/3)^2 in 36ths: 25, 16, 49, 16, 100, 16, 196, 64 -> sum 482/36
    # sigma = sqrt(482/36 / 8) = sqrt(482/288) = 1.29368...
    # AAR = max(0, 7 - 5/3) + max(0, 3 - sigma) = 16/3 + 3 - sqrt(482/288) = 7.03965...
    r = M.aar(y, yhat)
    assert r["mae"] == pytest.approx(5 / 3, abs=1e-12)
    assert r["sigma"] == pytest.approx(math.sqrt(482 / 288), abs=1e-12)
    assert r["aar"] == pytest.approx(16 / 3 + 3 - math.sqrt(482 / 288), abs=1e-12)
    assert r["aar"] == pytest.approx(7.03965, abs=1e-5)
    assert list(r["group_mae"].values()) == pytest.approx([2.5, 1, 0.5, 1, 0, 1, 4, 3])
    assert list(r["group_mae"]) == ["1-10", "11-20", "21-30", "31-40", "41-50", "51-60",
                                    "61-70", "71-81"]
    assert list(r["group_count"].values()) == [2, 1, 2, 2, 1, 1, 1, 2]
    assert r["groups_present"] == 8 and r["missing"] == []


def test_aar_glae_by_hand():
    y, yhat = (np.array(v, np.float32) for v in zip(*AAR_CASE))
    # GLAE eq. 15-16, 10 groups of 10 years 0-9, ..., 80-89, 90-100:
    #   0-9: 2.5 (ages 5, 0)   10-19: 1   20-29: 0   30-39: 1 (30, 35, 31: errors 1, 2, 0)
    #   40-49: 0   50-59: 1   60-69: 4   70-79: 0   80-89: empty   90-100: 6
    # n = 9 groups present; (MAE^j - 5/3)^2 in 36ths: 25, 16, 100, 16, 100, 16, 196, 100, 676
    # sum = 1245/36; sigma = sqrt(1245/36/9) = sqrt(1245/324) = 1.96025...
    # AAR = 16/3 + 3 - sigma = 6.37308...
    r = M.aar(y, yhat, groups="glae")
    assert r["sigma"] == pytest.approx(math.sqrt(1245 / 324), abs=1e-12)
    assert r["aar"] == pytest.approx(16 / 3 + 3 - math.sqrt(1245 / 324), abs=1e-12)
    assert len(r["group_mae"]) == 10
    assert r["groups_present"] == 9
    assert r["missing"] == ["80-89"]
    assert r["group_mae"]["80-89"] is None
    assert r["group_count"]["80-89"] == 0
    assert r["group_mae"]["30-39"] == pytest.approx(1.0)
    assert r["group_mae"]["90-100"] == pytest.approx(6.0)


def test_aar_glae_has_ten_groups_and_100_joins_the_last():
    # GLAE eq. 16: "10 years for a group" -> n = 10; age 100 (and above) is in 90-100
    assert len(M.GLAE_GROUPS) == 10
    assert M.GLAE_GROUPS[0] == (0, 9) and M.GLAE_GROUPS[-1] == (90, 100)
    y, yhat = f32(5, 92, 100, 103), f32(5, 92, 96, 101)
    r = M.aar(y, yhat, groups="glae")
    assert r["group_count"]["90-100"] == 3 and r["group_count"]["0-9"] == 1
    assert r["group_mae"]["90-100"] == pytest.approx(2.0)  # (0 + 4 + 2) / 3
    # sigma over the 2 groups present: MAE = 1.5, group MAEs 0 and 2
    assert r["sigma"] == pytest.approx(math.sqrt((1.5 ** 2 + 0.5 ** 2) / 2), abs=1e-7)


def test_aar_clipped_at_zero():
    # huge errors: both terms are clipped at 0
    r = M.aar(f32(5, 50), f32(40, 0))
    assert r["aar"] == 0.0 and r["mae"] == pytest.approx(42.5)


def test_mae_cmae_by_hand():
    y = f32(20, 20, 20, 30, 40.25)
    yhat = f32(21, 22, 20, 33, 40.25)
    # MAE = (1 + 2 + 0 + 3 + 0) / 5 = 1.2
    # CMAE: age 20 -> (1+2+0)/3 = 1, age 30 -> 3, age 40 (40.25 rounds to 40) -> 0
    #       CMAE = (1 + 3 + 0) / 3 = 4/3
    assert M.mae(y, yhat) == pytest.approx(1.2, abs=1e-12)
    assert M.cmae(y, yhat) == pytest.approx(4 / 3, abs=1e-12)
    assert _C.metrics_cmae(y, yhat)[1] == 3


def test_cmae_rounding_half_up():
    # 20.5 rounds to 21 (half up), 19.5 to 20: two ages, MAEs 1 and 3 -> CMAE 2
    assert M.cmae(f32(20.5, 19.5), f32(21.5, 22.5)) == pytest.approx(2.0)
    # 20.49 stays in 20 with 20.0: one age -> CMAE = MAE
    assert M.cmae(f32(20.0, 20.49), f32(21.0, 23.49)) == pytest.approx(2.0, abs=1e-5)


def test_epsilon_by_hand():
    # image 1: exp(-(12-10)^2 / (2*2^2)) = exp(-0.5); image 2: exp(0) = 1
    # epsilon = 1 - (exp(-0.5) + 1) / 2 = 0.19673...
    e = M.epsilon_error(f32(10, 20), f32(12, 20), f32(2, 1))
    assert e == pytest.approx(1 - (math.exp(-0.5) + 1) / 2, abs=1e-12)
    assert M.epsilon_error(f32(10), f32(10), f32(3)) == 0.0


def test_group_mae_by_hand():
    y = f32(5, 10, 30, 30, 30, 40, 70)
    yhat = f32(6, 13, 30, 30, 33, 45, 60)
    # 0-17: errors 1 (age 5), 3 (age 10): MAE 2, CMAE (1+3)/2 = 2
    # 18-65: age 30 errors 0, 0, 3 (MAE 1), age 40 error 5: MAE 8/4 = 2, CMAE (1+5)/2 = 3
    # 66-100: age 70 error 10
    g = M.group_mae(y, yhat)
    assert g["0-17"] == {"mae": 2.0, "cmae": 2.0, "count": 2, "n_ages": 2}
    assert g["18-65"] == {"mae": 2.0, "cmae": 3.0, "count": 4, "n_ages": 2}
    assert g["66-100"] == {"mae": 10.0, "cmae": 10.0, "count": 1, "n_ages": 1}
    # an empty group is None; an age in no group is ignored
    g = M.group_mae(f32(5, 200), f32(6, 0), edges=((0, 9), (10, 19), (20, 20)))
    assert g == {"0-9": {"mae": 1.0, "cmae": 1.0, "count": 1, "n_ages": 1}, "10-19": None,
                 "20": None}


def test_cs_by_hand():
    y = f32(10, 10, 10, 10, 10)
    yhat = f32(10, 10.5, 11, 8, 15)  # errors 0, 0.5, 1, 2, 5
    assert M.cs(y, yhat, 0) == pytest.approx(0.2)
    assert M.cs(y, yhat, 1) == pytest.approx(0.6)  # |e| <= theta is inclusive
    curve = M.cs(y, yhat, [0, 0.75, 1, 2, 4.99, 5, 100])
    np.testing.assert_allclose(curve, [0.2, 0.4, 0.6, 0.8, 0.8, 1.0, 1.0])
    assert isinstance(M.cs(y, yhat, 2.0), float)
    assert M.cs(y, yhat, []).shape == (0,)


def test_shot_by_hand():
    train = np.repeat(f32(10, 20, 30, 40, 50, 60),
                      [150, 50, 5, 100, 20, 19]).astype(np.float32)
    # training counts: 10:150 many (> 100); 20:50, 40:100 (not > 100), 50:20 (not < 20) medium;
    # 30:5, 60:19, 70:0 few (< 20)
    y = f32(10, 10, 20, 30, 40, 50, 60, 70)
    yhat = f32(11, 13, 20, 34, 41, 52, 60, 76)  # errors 1, 3, 0, 4, 1, 2, 0, 6
    s = M.shot_mae(y, yhat, train)
    assert s["many"] == {"mae": 2.0, "cmae": 2.0, "count": 2, "n_ages": 1}
    assert s["medium"] == {"mae": 1.0, "cmae": 1.0, "count": 3, "n_ages": 3}
    # few: ages 30, 60, 70 errors 4, 0, 6
    assert s["few"] == {"mae": pytest.approx(10 / 3), "cmae": pytest.approx(10 / 3),
                        "count": 3, "n_ages": 3}
    # no many-shot test age -> None
    assert M.shot_mae(f32(20), f32(21), train)["many"] is None


def test_per_age_by_hand():
    m, c = M.per_age_mae(f32(0, 2, 2), f32(1, 2, 4), num_classes=4)
    np.testing.assert_array_equal(c, [1, 0, 2, 0])
    assert c.dtype == np.int64
    np.testing.assert_array_equal(m.mask, [False, True, False, True])
    np.testing.assert_allclose(m.compressed(), [1.0, 1.0])
    # the masked mean is CMAE; the raw data is NaN under the mask, never a silent 0
    assert m.mean() == pytest.approx(M.cmae(f32(0, 2, 2), f32(1, 2, 4)))
    assert np.isnan(np.asarray(m)[1]) and np.isnan(np.asarray(m).mean())


def test_routing_by_hand():
    y = f32(5, 10, 30, 30, 30, 70)
    choice = np.array([1, 1, 0, 0, 1, 1], np.int32)
    r = M.routing_usage(y, choice)
    assert r["0-17"] == {"vanilla": 0.0, "balanced": 1.0, "count": 2}
    assert r["18-65"]["vanilla"] == pytest.approx(2 / 3)
    assert r["18-65"]["balanced"] == pytest.approx(1 / 3)
    assert r["66-100"] == {"vanilla": 0.0, "balanced": 1.0, "count": 1}
    # bool choices are accepted; an empty group is None
    r = M.routing_usage(f32(5), np.array([False]), edges=((0, 9), (10, 19)))
    assert r == {"0-9": {"vanilla": 1.0, "balanced": 0.0, "count": 1}, "10-19": None}


# ----------------------------------------------------------------------------------------
# against NumPy on random data

@pytest.mark.parametrize("seed", SEEDS)
def test_random_against_numpy(seed):
    y, yhat, rng = random_case(seed)
    e = ref_err(y, yhat)
    assert M.mae(y, yhat) == pytest.approx(e.mean(), rel=1e-12)
    assert M.cmae(y, yhat) == pytest.approx(ref_cmae(y, yhat), rel=1e-12)

    for name, groups in (("lae", M.LAE_GROUPS), ("glae", M.GLAE_GROUPS)):
        a, m, s, gm = ref_aar(y, yhat, groups)
        r = M.aar(y, yhat, name)
        assert r["aar"] == pytest.approx(a, rel=1e-12)
        assert r["mae"] == pytest.approx(m, rel=1e-12)
        assert r["sigma"] == pytest.approx(s, rel=1e-12)
        for got, want in zip(r["group_mae"].values(), gm):
            assert (got is None) == (want is None)
            if want is not None:
                assert got == pytest.approx(want, rel=1e-12)

    sig = rng.uniform(0.5, 6, y.size).astype(np.float32)
    d = np.asarray(yhat, np.float64) - np.asarray(y, np.float64)
    want = 1 - np.mean(np.exp(-d * d / (2 * np.asarray(sig, np.float64) ** 2)))
    assert M.epsilon_error(y, yhat, sig) == pytest.approx(want, rel=1e-12)

    edges = ((0, 17), (18, 65), (66, 100), (3, 3), (40, 49))
    for got, want in zip(M.group_mae(y, yhat, edges).values(), ref_group(y, yhat, edges)):
        assert (got is None) == (want is None)
        if want is not None:
            assert got["mae"] == pytest.approx(want[0], rel=1e-12)
            assert got["cmae"] == pytest.approx(want[1], rel=1e-12)
            assert (got["count"], got["n_ages"]) == (want[2], want[3])

    theta = np.concatenate([np.arange(0, 11), rng.uniform(0, 12, 20), e[:5]])  # ties too
    np.testing.assert_array_equal(M.cs(y, yhat, theta), np.mean(e[:, None] <= theta, axis=0))
    theta = np.concatenate([np.linspace(0, 15, 100), e[:50]])  # > 64 thresholds: sorted path
    np.testing.assert_array_equal(M.cs(y, yhat, theta), np.mean(e[:, None] <= theta, axis=0))

    train = np.clip(rng.normal(35, 15, 4000), 0, 100).astype(np.float32)
    got, want = M.shot_mae(y, yhat, train), ref_shot(y, yhat, train)
    for s in M.SHOTS:
        assert (got[s] is None) == (want[s] is None)
        if want[s] is not None:
            assert got[s]["mae"] == pytest.approx(want[s][0], rel=1e-12)
            assert got[s]["cmae"] == pytest.approx(want[s][1], rel=1e-12)
            assert (got[s]["count"], got[s]["n_ages"]) == (want[s][2], want[s][3])

    m, c = M.per_age_mae(y, yhat)
    a = ref_age(y)
    np.testing.assert_array_equal(c, np.bincount(a, minlength=101))
    want = np.bincount(a, weights=e, minlength=101)
    np.testing.assert_array_equal(m.mask, c == 0)
    np.testing.assert_allclose(m.compressed(), want[c > 0] / c[c > 0], rtol=1e-12)

    choice = rng.integers(0, 2, y.size).astype(np.int32)
    for (lo, hi), got in zip(M.TAIL_HEAD_GROUPS, M.routing_usage(y, choice).values()):
        sel = (a >= lo) & (a <= hi)
        if not sel.any():
            assert got is None
            continue
        assert got["count"] == sel.sum()
        assert got["balanced"] == pytest.approx(choice[sel].mean(), rel=1e-12)
        assert got["vanilla"] + got["balanced"] == pytest.approx(1.0)


def test_float64_and_list_inputs_are_cast():
    y = [10.0, 20.0, 30.0]
    assert M.mae(y, np.array([11.0, 20.0, 27.0])) == pytest.approx(4 / 3)
    # age 1: error 1; age 2: errors 0, 3 -> 1.5; CMAE = (1 + 1.5) / 2
    assert M.cmae(np.array([1, 2, 2]), np.array([2, 2, 5])) == pytest.approx(1.25)


def test_report_assembles_everything():
    y, yhat, rng = random_case(0, n=200)
    sig = np.full(y.size, 3.0, np.float32)
    choice = rng.integers(0, 2, y.size)
    r = M.report(y, yhat, sigma=sig, train_ages=y, choice=choice)
    assert r["n"] == 200
    assert r["mae"] == M.mae(y, yhat) and r["cmae"] == M.cmae(y, yhat)
    assert r["aar_lae"] == M.aar(y, yhat) and r["aar_glae"] == M.aar(y, yhat, "glae")
    assert r["group"] == M.group_mae(y, yhat)
    np.testing.assert_array_equal(r["cs"]["cs"], M.cs(y, yhat, np.arange(11)))
    assert r["epsilon_error"] == M.epsilon_error(y, yhat, sig)
    assert r["shot"] == M.shot_mae(y, yhat, y)
    assert r["routing"] == M.routing_usage(y, choice)
    assert r["per_age"]["count"].sum() == 200
    r = M.report(y, yhat)
    assert "epsilon_error" not in r and "shot" not in r and "routing" not in r


# ----------------------------------------------------------------------------------------
# empty groups, bad input, inputs unmodified, refcounts

def test_empty_groups_never_nan():
    # all images aged 30: only one AAR group present, sigma = 0, AAR = 7 - MAE + 3
    y, yhat = f32(30, 30), f32(31, 33)
    r = M.aar(y, yhat)
    assert r["groups_present"] == 1 and r["sigma"] == 0.0 and r["aar"] == pytest.approx(8.0)
    assert len(r["missing"]) == 7
    assert all(v is None for k, v in r["group_mae"].items() if k != "21-30")
    assert M.group_mae(y, yhat)["0-17"] is None
    s = M.shot_mae(y, yhat, f32(1))
    assert s["many"] is None and s["medium"] is None and s["few"]["count"] == 2
    for d in (r["group_mae"], M.group_mae(y, yhat), s):
        for v in d.values():
            assert v is None or not any(isinstance(x, float) and math.isnan(x)
                                        for x in (v.values() if isinstance(v, dict) else [v]))


BAD = [
    (lambda: M.mae(f32(1, 2), f32(1)), ValueError, "same length"),
    (lambda: _C.metrics_mae(f32(1, 2), f32(1)), ValueError, "same shape"),
    (lambda: M.mae(f32(), f32()), ValueError, "empty"),
    (lambda: M.cmae(f32(), f32()), ValueError, "empty"),
    (lambda: M.mae(f32(1, np.nan), f32(1, 2)), ValueError, r"y\[1\] is not finite"),
    (lambda: M.mae(f32(1, 2), f32(np.inf, 2)), ValueError, r"yhat\[0\] is not finite"),
    (lambda: M.cmae(f32(1, -2), f32(1, 2)), ValueError, r"y\[1\] is a negative age"),
    (lambda: M.aar(f32(-0.1), f32(1)), ValueError, "negative age"),
    (lambda: M.mae(f32(1e6), f32(1)), ValueError, "above the largest age"),
    (lambda: M.mae(np.ones((2, 2)), np.ones((2, 2))), ValueError, "must be 1-D"),
    (lambda: M.mae(["a"], ["b"]), TypeError, "must hold numbers"),
    (lambda: M.epsilon_error(f32(1, 2), f32(1, 2), f32(1, 0)), ValueError, r"sigma\[1\] must be finite and > 0"),
    (lambda: M.epsilon_error(f32(1, 2), f32(1, 2), f32(1, -1)), ValueError, "sigma"),
    (lambda: M.epsilon_error(f32(1, 2), f32(1, 2), f32(np.nan, 1)), ValueError, "sigma"),
    (lambda: M.epsilon_error(f32(1, 2), f32(1, 2), f32(1)), ValueError, "sigma must have the length"),
    (lambda: M.cs(f32(1), f32(1), -1), ValueError, "theta"),
    (lambda: M.cs(f32(1), f32(1), np.nan), ValueError, "theta"),
    (lambda: M.cs(f32(1), f32(1), [[1]]), ValueError, "theta must be a scalar or 1-D"),
    (lambda: M.per_age_mae(f32(101), f32(1)), ValueError, "num_classes"),
    (lambda: M.per_age_mae(f32(1), f32(1), 0), ValueError, "num_classes"),
    (lambda: M.group_mae(f32(1), f32(1), ((5, 2),)), ValueError, "0 <= low <= high"),
    (lambda: M.group_mae(f32(1), f32(1), ((-1, 2),)), ValueError, "0 <= low <= high"),
    (lambda: M.group_mae(f32(1), f32(1), ()), ValueError, "at least one"),
    (lambda: M.group_mae(f32(1), f32(1), ((0, 1.5),)), ValueError, "pair of integers"),
    (lambda: M.aar(f32(1), f32(1), "foo"), ValueError, "groups must be"),
    (lambda: M.aar(f32(1), f32(1), ((0, 9), (20, 29))), ValueError, "contiguous"),
    (lambda: M.shot_mae(f32(1), f32(1), f32()), ValueError, "train_ages is empty"),
    (lambda: M.shot_mae(f32(1), f32(1), f32(-3)), ValueError, r"train_ages\[0\] is a negative"),
    (lambda: M.shot_mae(f32(1), f32(1), f32(1), many_thr=10, few_thr=50), ValueError, "few_thr"),
    (lambda: M.shot_mae(f32(1), f32(1), f32(1), many_thr=1.5), TypeError, "many_thr"),
    (lambda: M.routing_usage(f32(1, 2), np.array([0, 2])), ValueError, "only 0"),
    (lambda: M.routing_usage(f32(1, 2), np.array([0.0, 1.0])), TypeError, "choice"),
    (lambda: M.routing_usage(f32(1, 2), np.array([0])), ValueError, "same length"),
    (lambda: M.routing_usage(f32(1, np.nan), np.array([0, 1])), ValueError, "not finite"),
    (lambda: M.routing_usage(f32(), np.array([], int)), ValueError, "empty"),
]


@pytest.mark.parametrize("call,exc,msg", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_binding_strict_checks():
    y = f32(1, 2, 3)
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    with pytest.raises(TypeError, match="y must have dtype float32"):
        _C.metrics_mae(y.astype(np.float64), y)
    with pytest.raises(TypeError, match="yhat must be a numpy.ndarray"):
        _C.metrics_mae(y, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="y must be C-contiguous"):
        _C.metrics_mae(np.ones(6, np.float32)[::2], y)
    with pytest.raises(ValueError, match="y must have 1 dimensions"):
        _C.metrics_mae(np.ones((3, 1), np.float32), y)
    with pytest.raises(ValueError, match="lo and hi must have the same shape"):
        _C.metrics_group_mae(y, y, i32(0, 5), i32(4))
    with pytest.raises(TypeError, match="lo must have dtype int32"):
        _C.metrics_group_mae(y, y, np.array([0]), i32(4))
    with pytest.raises(ValueError, match="0 <= low <= high"):  # C check, bypassing Python
        _C.metrics_group_mae(y, y, i32(5), i32(2))
    with pytest.raises(ValueError, match="need at least one group"):
        _C.metrics_group_mae(y, y, i32(), i32())
    with pytest.raises(ValueError, match="increase strictly"):
        _C.metrics_aar(y, y, i32(0, 10, 10))
    with pytest.raises(ValueError, match="need at least one group"):
        _C.metrics_aar(y, y, i32())
    with pytest.raises(ValueError, match=r"choice\[0\] = 3"):
        _C.metrics_routing(y, i32(3, 0, 0), i32(0), i32(9))
    with pytest.raises(TypeError, match="theta must have dtype float64"):
        _C.metrics_cs(y, y, f32(1))
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        _C.metrics_per_age(y, y, 0)
    with pytest.raises(ValueError, match="few_thr"):
        _C.metrics_shot(y, y, y, -1, 20)


def test_inputs_unmodified():
    y, yhat, rng = random_case(3, n=100)
    sig = np.full(100, 2.0, np.float32)
    choice = rng.integers(0, 2, 100).astype(np.int32)
    theta = np.arange(5.0)
    assert_unmodified(M.mae, y, yhat)
    assert_unmodified(M.cmae, y, yhat)
    assert_unmodified(M.aar, y, yhat)
    assert_unmodified(M.epsilon_error, y, yhat, sig)
    assert_unmodified(M.group_mae, y, yhat)
    assert_unmodified(M.cs, y, yhat, theta)
    assert_unmodified(M.shot_mae, y, yhat, y)
    assert_unmodified(M.per_age_mae, y, yhat)
    assert_unmodified(M.routing_usage, y, choice)
    assert_unmodified(lambda *a: M.report(a[0], a[1], sigma=a[2], train_ages=a[0], choice=a[3]),
                      y, yhat, sig, choice)


def test_no_reference_leaks():
    y, yhat, _ = random_case(1, n=50)
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    lo, hi, starts = i32(0, 18, 66), i32(17, 65, 100), i32(1, 11, 21, 31, 41, 51, 61, 71)
    choice = np.zeros(50, np.int32)
    assert_no_leak(_C.metrics_mae, y, yhat)
    assert_no_leak(_C.metrics_cmae, y, yhat)
    assert_no_leak(_C.metrics_per_age, y, yhat, 101)
    assert_no_leak(_C.metrics_group_mae, y, yhat, lo, hi)
    assert_no_leak(_C.metrics_aar, y, yhat, starts)
    assert_no_leak(_C.metrics_epsilon, y, yhat, yhat + 1)
    assert_no_leak(_C.metrics_cs, y, yhat, np.arange(3.0))
    assert_no_leak(_C.metrics_shot, y, yhat, y, 100, 20)
    assert_no_leak(_C.metrics_routing, y, choice, lo, hi)
    assert_no_leak(M.report, y, yhat, n=50)

    def failing(*a):  # error paths must not leak either
        with pytest.raises(ValueError):
            _C.metrics_aar(*a)
    assert_no_leak(failing, f32(np.nan), f32(1), starts)


def test_large_input_parallel_sums():
    # a realistic test-set size: double sums stay exact to ~1e-12
    rng = np.random.default_rng(7)
    y = rng.uniform(0, 100, 300_000).astype(np.float32)
    yhat = (y + rng.normal(0, 3, y.size)).astype(np.float32)
    sig = rng.uniform(1, 5, y.size).astype(np.float32)
    e = ref_err(y, yhat)
    assert M.mae(y, yhat) == pytest.approx(e.mean(), rel=1e-12)
    d2 = e * e / (2 * np.asarray(sig, np.float64) ** 2)
    assert M.epsilon_error(y, yhat, sig) == pytest.approx(1 - np.exp(-d2).mean(), rel=1e-12)
    assert M.cmae(y, yhat) == pytest.approx(ref_cmae(y, yhat), rel=1e-12)
