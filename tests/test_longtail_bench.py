"""bench/longtail.py's answers on made-up distributions (no training): the single heads,
GLAE's routing and the route_select criteria come out as their definitions say, the
cross-fitted thresholds never see the images they answer, and a rerun reads its caches."""
import argparse
import importlib.util
import json
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
K = 101


@pytest.fixture(scope="module")
def lt():
    spec = importlib.util.spec_from_file_location(
        "longtail", os.path.join(HERE, "..", "bench", "longtail.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def peaked(ages, width, rng):
    """Distributions peaked at `ages` with the given width, slightly noisy."""
    k = np.arange(K)
    p = np.exp(-0.5 * ((k[None] - np.asarray(ages)[:, None]) / width) ** 2)
    p *= np.exp(0.05 * rng.standard_normal(p.shape))
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def fake_arm(rng, n=240):
    """A vanilla head that pulls every age towards 30 (the prior) and a balanced head that
    does not, but is noisier: the trade-off the study is about."""
    y = rng.integers(1, 90, n).astype(np.float32)
    van = 30 + 0.6 * (y - 30) + rng.normal(0, 3, n)
    bal = y + rng.normal(0, 6, n)
    d = {"ages": y, "train_ages": np.repeat(np.arange(1, 90), 3).astype(np.float32)}
    d["pv"], d["pvf"] = peaked(van, 3, rng), peaked(van + 0.5, 3, rng)
    d["pb"], d["pbf"] = peaked(bal, 4, rng), peaked(bal - 0.5, 4, rng)
    return d


def test_answers_follow_their_definitions(lt, rng):
    d = fake_arm(rng)
    k = np.arange(K)
    ev = (0.5 * (d["pv"] + d["pvf"])) @ k
    eb = (0.5 * (d["pb"] + d["pbf"])) @ k
    np.testing.assert_allclose(lt.answer(d, "vanilla")[0], ev, rtol=1e-5)
    np.testing.assert_allclose(lt.answer(d, "balanced")[0], eb, rtol=1e-5)
    age, choice, _ = lt.answer(d, "age", 18.0, 65.0)
    np.testing.assert_array_equal(choice, (ev < 18) | (ev > 65))
    np.testing.assert_allclose(age, np.where(choice == 1, eb, ev), rtol=1e-5)
    s, b = lt.answer(d, "smaller"), lt.answer(d, "bigger")
    assert np.all(s[1] + b[1] >= 1)  # the mirror image of each other, ties aside


def test_crossfit_thresholds_come_from_the_other_half(lt, rng):
    d = fake_arm(rng)
    ages, choice, th = lt.crossfit(d, "age")
    assert len(th) == 2 and ages.shape == d["ages"].shape
    n = len(d["ages"])
    halves = np.random.default_rng(0).permutation(n)
    first = np.sort(halves[:n // 2])
    # the first half is answered with the threshold the second half chose
    a, b = lt.calibrate(lt.sub(d, np.sort(halves[n // 2:])), "age")
    assert th[0] == lt.calibrate(lt.sub(d, first), "age")
    np.testing.assert_allclose(ages[np.sort(halves[n // 2:])],
                               lt.answer(lt.sub(d, np.sort(halves[n // 2:])), "age", *th[0])[0])
    np.testing.assert_allclose(ages[first], lt.answer(lt.sub(d, first), "age", a, b)[0])


def test_report_reads_the_caches(lt, rng, tmp_path, capsys):
    args = argparse.Namespace(runs=str(tmp_path), epochs1=4, stop1=2)
    for arm in ("paper", "crt"):
        for seed in (0, 1):
            np.savez(lt.arm_path(args, arm, seed, 64), **fake_arm(np.random.default_rng(seed)))
    res = lt.report(args, [0, 1], 64)
    out = capsys.readouterr().out
    assert set(res) == {"paper", "crt"} and len(res["paper"]["answers"]) == 2
    for words in ("routed (smaller flip-KL)", "age gate*", "paired against", "flip-KL: U1",
                  "sent 18-65, balanced worse", "arms, paired against 'paper'"):
        assert words in out, words
    row = res["paper"]["answers"][0]["vanilla"]
    assert row["to balanced 18-65"] == 0 and row["mae"] > 0
    cached = sorted(os.listdir(tmp_path))
    again = lt.report(args, [0, 1], 64)["paper"]  # the second run only reads (JSON: NaN, lists)
    assert json.dumps(again, sort_keys=True) == json.dumps(res["paper"], sort_keys=True)
    assert sorted(os.listdir(tmp_path)) == cached
