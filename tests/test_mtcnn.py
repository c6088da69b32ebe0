"""MTCNN (csrc/nn/mtcnn.c) against NumPy references written here: the three networks in
PyTorch's NCHW semantics on the PyTorch-layout weights, the area resize, NMS (union and
min), box regression and squaring, a NumPy port of the whole pipeline, and, with the
shared weights and photos, detection rate and landmark plausibility on UTKFace."""
import os
import sys
import time

import numpy as np
import pytest

import glae
from glae import _C
from glae import detect as gd
from glae import torchfile

from conftest import MTCNN_WEIGHTS as _W, UTKFACE_DEV as _U
from helpers import assert_no_leak, assert_unmodified

# conftest resolves ../shared from the checkout; a worktree elsewhere can set these
MTCNN_WEIGHTS = os.environ.get("GLAE_MTCNN_WEIGHTS", _W)
UTKFACE_DEV = os.environ.get("GLAE_UTKFACE_DEV", _U)
HAVE_WEIGHTS = os.path.isdir(MTCNN_WEIGHTS)
HAVE_PHOTOS = os.path.isdir(UTKFACE_DEV)
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="shared MTCNN weights absent")
needs_photos = pytest.mark.skipif(not (HAVE_WEIGHTS and HAVE_PHOTOS),
                                  reason="shared MTCNN weights or UTKFace dev photos absent")

# ---- NumPy references (PyTorch NCHW semantics) ------------------------------------------


def conv_ref(x, w, b):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    oh, ow = h - k + 1, wd - k + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + oh, j:j + ow], w[:, :, i, j])
    return out + b[None, :, None, None]


def prelu_ref(x, a):
    a = a.reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x > 0, x, a * x)


def pool_ref(x, k, s):
    """max pool, ceil mode, no padding (PyTorch's output-size rule)"""
    def size(n):
        o = -(-(n - k) // s) + 1
        return o - 1 if (o - 1) * s >= n else o
    n, c, h, w = x.shape
    oh, ow = size(h), size(w)
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * s:i * s + k, j * s:j * s + k].max(axis=(2, 3))
    return out


def softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def dense_ref(x, w, b):
    return x @ w.T.astype(np.float64) + b


def pnet_ref(sd, x):
    """x NHWC -> prob (N, OH, OW), reg (N, OH, OW, 4)"""
    y = x.transpose(0, 3, 1, 2).astype(np.float64)
    y = prelu_ref(conv_ref(y, sd["conv1.weight"], sd["conv1.bias"]), sd["prelu1.weight"])
    y = pool_ref(y, 2, 2)
    y = prelu_ref(conv_ref(y, sd["conv2.weight"], sd["conv2.bias"]), sd["prelu2.weight"])
    y = prelu_ref(conv_ref(y, sd["conv3.weight"], sd["conv3.bias"]), sd["prelu3.weight"])
    p = softmax_ref(conv_ref(y, sd["conv4_1.weight"], sd["conv4_1.bias"]), 1)[:, 1]
    r = conv_ref(y, sd["conv4_2.weight"], sd["conv4_2.bias"]).transpose(0, 2, 3, 1)
    return p, r


def crop_net_ref(sd, x, convs, pools, dense):
    y = x.transpose(0, 3, 1, 2).astype(np.float64)
    for i, name in enumerate(convs):
        y = prelu_ref(conv_ref(y, sd[f"{name}.weight"], sd[f"{name}.bias"]),
                      sd[f"prelu{name[-1]}.weight"])
        if pools[i]:
            y = pool_ref(y, *pools[i])
    # the Caffe flatten: permute(0, 3, 2, 1) of NCHW, i.e. (N, W, H, C)
    y = y.transpose(0, 3, 2, 1).reshape(len(y), -1)
    y = prelu_ref(dense_ref(y, sd[f"{dense}.weight"], sd[f"{dense}.bias"]),
                  sd[f"prelu{dense[-1]}.weight"])
    return y


def rnet_ref(sd, x):
    y = crop_net_ref(sd, x, ["conv1", "conv2", "conv3"], [(3, 2), (3, 2), None], "dense4")
    p = softmax_ref(dense_ref(y, sd["dense5_1.weight"], sd["dense5_1.bias"]), 1)[:, 1]
    return p, dense_ref(y, sd["dense5_2.weight"], sd["dense5_2.bias"])


def onet_ref(sd, x):
    y = crop_net_ref(sd, x, ["conv1", "conv2", "conv3", "conv4"], [(3, 2), (3, 2), (2, 2), None],
                     "dense5")
    p = softmax_ref(dense_ref(y, sd["dense6_1.weight"], sd["dense6_1.bias"]), 1)[:, 1]
    return (p, dense_ref(y, sd["dense6_2.weight"], sd["dense6_2.bias"]),
            dense_ref(y, sd["dense6_3.weight"], sd["dense6_3.bias"]))


def resize_ref(img, oh, ow):
    """PyTorch interpolate(mode='area'): 2-D window means (adaptive average pooling),
    from an integral image"""
    h, w = img.shape[:2]
    s = np.zeros((h + 1, w + 1) + img.shape[2:])
    s[1:, 1:] = img.astype(np.float64).cumsum(0).cumsum(1)
    i, j = np.arange(oh), np.arange(ow)
    y0, y1 = (i * h) // oh, -(-((i + 1) * h) // oh)
    x0, x1 = (j * w) // ow, -(-((j + 1) * w) // ow)
    tot = s[y1][:, x1] - s[y0][:, x1] - s[y1][:, x0] + s[y0][:, x0]
    area = np.outer(y1 - y0, x1 - x0).reshape((oh, ow) + (1,) * (img.ndim - 2))
    return tot / area


def nms_ref(boxes, thresh, mode):
    b = boxes.astype(np.float64)
    one = 1.0 if mode == "min" else 0.0
    area = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    order = sorted(range(len(b)), key=lambda i: (-b[i, 4], i))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            iw = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + one)
            ih = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + one)
            inter = iw * ih
            o = inter / min(area[i], area[j]) if mode == "min" else inter / (area[i] + area[j] - inter)
            if o <= thresh:
                rest.append(j)
        order = rest
    return np.array(keep, dtype=np.int64)


def bbreg_ref(b, r):
    b = b.astype(np.float64).copy()
    w, h = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    b[:, 0] += r[:, 0] * w
    b[:, 1] += r[:, 1] * h
    b[:, 2] += r[:, 2] * w
    b[:, 3] += r[:, 3] * h
    return b


def rerec_ref(b):
    b = b.astype(np.float64).copy()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    l = np.maximum(w, h)
    b[:, 0] += w * 0.5 - l * 0.5
    b[:, 1] += h * 0.5 - l * 0.5
    b[:, 2] = b[:, 0] + l
    b[:, 3] = b[:, 1] + l
    return b


# ---- weights ---------------------------------------------------------------------------------


def random_state_dicts(rng, scale=0.3):
    out = []
    for net in _C.mtcnn_spec():
        sd = {}
        for name, shape in net:
            a = rng.standard_normal(shape) * scale
            if name.startswith("prelu"):
                a = np.abs(a)
            sd[name] = a.astype(np.float32)
        out.append(sd)
    return out


def real_state_dicts():
    return [torchfile.load_state_dict(os.path.join(MTCNN_WEIGHTS, f))
            for f in ("pnet.pt", "rnet.pt", "onet.pt")]


def weight_sets(rng):
    sets = [("random", random_state_dicts(rng))]
    if HAVE_WEIGHTS:
        sets.append(("real", real_state_dicts()))
    return sets


# ---- the networks ------------------------------------------------------------------------------


def test_pnet_matches_reference(rng):
    for label, sds in weight_sets(rng):
        model = _C.mtcnn_new(*sds)
        for h, w in [(12, 12), (13, 17), (31, 24)]:
            x = rng.uniform(-1, 1, (2, h, w, 3)).astype(np.float32)
            prob, reg = assert_unmodified(lambda a: _C.mtcnn_pnet_forward(model, a), x)
            p_ref, r_ref = pnet_ref(sds[0], x)
            assert prob.shape == p_ref.shape and reg.shape == r_ref.shape
            np.testing.assert_allclose(prob, p_ref, atol=2e-5, err_msg=label)
            np.testing.assert_allclose(reg, r_ref, atol=2e-4, rtol=1e-4, err_msg=label)


def test_rnet_onet_match_reference(rng):
    for label, sds in weight_sets(rng):
        model = _C.mtcnn_new(*sds)
        x = rng.uniform(-1, 1, (3, 24, 24, 3)).astype(np.float32)
        prob, reg = _C.mtcnn_rnet_forward(model, x)
        p_ref, r_ref = rnet_ref(sds[1], x)
        np.testing.assert_allclose(prob, p_ref, atol=2e-5, err_msg=label)
        np.testing.assert_allclose(reg, r_ref, atol=2e-4, rtol=1e-4, err_msg=label)
        x = rng.uniform(-1, 1, (2, 48, 48, 3)).astype(np.float32)
        prob, reg, lm = _C.mtcnn_onet_forward(model, x)
        p_ref, r_ref, l_ref = onet_ref(sds[2], x)
        np.testing.assert_allclose(prob, p_ref, atol=2e-5, err_msg=label)
        np.testing.assert_allclose(reg, r_ref, atol=2e-4, rtol=1e-4, err_msg=label)
        np.testing.assert_allclose(lm, l_ref, atol=2e-4, rtol=1e-4, err_msg=label)


def test_empty_batches(rng):
    model = _C.mtcnn_new(*random_state_dicts(rng))
    assert _C.mtcnn_pnet_forward(model, np.zeros((0, 12, 12, 3), np.float32))[0].shape == (0, 1, 1)
    assert _C.mtcnn_rnet_forward(model, np.zeros((0, 24, 24, 3), np.float32))[1].shape == (0, 4)
    assert _C.mtcnn_onet_forward(model, np.zeros((0, 48, 48, 3), np.float32))[2].shape == (0, 10)


def test_model_bad_weights(rng):
    sds = random_state_dicts(rng)
    with pytest.raises(TypeError, match="pnet must be a dict"):
        _C.mtcnn_new([1], sds[1], sds[2])
    bad = dict(sds[1])
    del bad["dense4.bias"]
    with pytest.raises(ValueError, match="rnet: missing tensor dense4.bias"):
        _C.mtcnn_new(sds[0], bad, sds[2])
    bad = dict(sds[2], **{"dense5.weight": np.zeros((256, 1151), np.float32)})
    with pytest.raises(ValueError, match=r"onet\[dense5.weight\]: dimension 1"):
        _C.mtcnn_new(sds[0], sds[1], bad)
    bad = dict(sds[0], **{"conv1.weight": sds[0]["conv1.weight"].astype(np.float64)})
    with pytest.raises(TypeError, match=r"pnet\[conv1.weight\] must have dtype"):
        _C.mtcnn_new(bad, sds[1], sds[2])
    bad = dict(sds[0], **{"conv1.bias": np.zeros((10, 1), np.float32)})
    with pytest.raises(ValueError, match="dimensions"):
        _C.mtcnn_new(bad, sds[1], sds[2])


def test_net_bad_inputs(rng):
    model = _C.mtcnn_new(*random_state_dicts(rng))
    with pytest.raises(TypeError, match="capsule"):
        _C.mtcnn_pnet_forward(object(), np.zeros((1, 12, 12, 3), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        _C.mtcnn_pnet_forward(model, np.zeros((1, 12, 12, 3), np.float64))
    with pytest.raises(ValueError, match="at least 12x12"):
        _C.mtcnn_pnet_forward(model, np.zeros((1, 11, 30, 3), np.float32))
    with pytest.raises(ValueError, match="dimension 3"):
        _C.mtcnn_pnet_forward(model, np.zeros((1, 12, 12, 4), np.float32))
    with pytest.raises(ValueError, match="dimension 1 must be 24"):
        _C.mtcnn_rnet_forward(model, np.zeros((1, 25, 24, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.mtcnn_onet_forward(model, np.zeros((1, 48, 96, 3), np.float32)[:, :, ::2])
    with pytest.raises(ValueError, match="4 dimensions"):
        _C.mtcnn_onet_forward(model, np.zeros((48, 48, 3), np.float32))


# ---- box arithmetic and resize -------------------------------------------------------------------


def test_nms_constructed():
    b = np.array([[0, 0, 10, 10, 0.9],
                  [5, 0, 15, 10, 0.8],   # IoU 1/3 with the first (no +1)
                  [2, 2, 5, 5, 0.7],     # inside the first: IoU 0.09, min-ratio 1
                  [50, 50, 60, 60, 0.95]], np.float32)
    np.testing.assert_array_equal(_C.mtcnn_nms(b, 0.3, "union"), [3, 0, 2])
    np.testing.assert_array_equal(_C.mtcnn_nms(b, 0.4, "union"), [3, 0, 1, 2])
    # min mode, +1 areas: box 1 vs 0: 66/121 = 0.545; box 2 inside 0: 1.0
    np.testing.assert_array_equal(_C.mtcnn_nms(b, 0.5, "min"), [3, 0])
    np.testing.assert_array_equal(_C.mtcnn_nms(b, 0.6, "min"), [3, 0, 1])
    assert _C.mtcnn_nms(np.zeros((0, 5), np.float32), 0.5, "union").shape == (0,)


def test_nms_random_against_reference(rng):
    for mode in ("union", "min"):
        for _ in range(5):
            n = 60
            c = rng.uniform(0, 100, (n, 2))
            s = rng.uniform(5, 40, (n, 2))
            b = np.column_stack([c - s / 2, c + s / 2, rng.uniform(0, 1, n)]).astype(np.float32)
            for t in (0.3, 0.5, 0.7):
                keep = assert_unmodified(lambda a: _C.mtcnn_nms(a, t, mode), b)
                np.testing.assert_array_equal(keep, nms_ref(b, t, mode))


def test_nms_bad_inputs():
    with pytest.raises(ValueError, match="at least 5 columns"):
        _C.mtcnn_nms(np.zeros((3, 4), np.float32), 0.5, "union")
    with pytest.raises(ValueError, match="mode"):
        _C.mtcnn_nms(np.zeros((3, 5), np.float32), 0.5, "iou")
    with pytest.raises(TypeError, match="dtype"):
        _C.mtcnn_nms(np.zeros((3, 5)), 0.5, "min")


def test_bbreg_rerec(rng):
    b = np.column_stack([rng.uniform(0, 50, (20, 2)), rng.uniform(60, 120, (20, 2)),
                         rng.uniform(0, 1, 20)]).astype(np.float32)
    r = rng.uniform(-0.3, 0.3, (20, 4)).astype(np.float32)
    got = assert_unmodified(_C.mtcnn_bbreg, b, r)
    np.testing.assert_allclose(got[:, :4], bbreg_ref(b, r)[:, :4], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got[:, 4], b[:, 4])
    sq = assert_unmodified(_C.mtcnn_rerec, b)
    np.testing.assert_allclose(sq[:, :4], rerec_ref(b)[:, :4], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sq[:, 2] - sq[:, 0], sq[:, 3] - sq[:, 1], atol=1e-4)
    with pytest.raises(ValueError, match="dimension 0"):
        _C.mtcnn_bbreg(b, r[:5])
    with pytest.raises(ValueError, match="columns"):
        _C.mtcnn_rerec(b[:, :3].copy())


def test_resize_area(rng):
    for (h, w), (oh, ow) in [((7, 9), (3, 4)), ((5, 5), (12, 7)), ((20, 31), (20, 31)),
                             ((48, 37), (24, 24)), ((1, 1), (3, 2))]:
        img = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        got = _C.mtcnn_resize_area(img, oh, ow)
        np.testing.assert_allclose(got, resize_ref(img, oh, ow), rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="oh"):
        _C.mtcnn_resize_area(img, 0, 3)
    with pytest.raises(ValueError, match="img dimension"):
        _C.mtcnn_resize_area(np.zeros((0, 3, 3), np.float32), 2, 2)


# ---- the whole pipeline against a NumPy port ------------------------------------------------------


def pipeline_ref(model, img, min_face=20.0, factor=0.709, th=(0.6, 0.7, 0.7)):
    """The facenet-pytorch detect_face steps, written with NumPy around our networks."""
    h, w = img.shape[:2]
    fimg = img.astype(np.float32)
    f32 = np.float32
    factor = float(np.float32(factor))
    scale = 12.0 / float(np.float32(min_face))
    minl = min(h, w) * scale
    levels = []
    while minl >= 12:
        hs, ws = int(h * scale + 1), int(w * scale + 1)
        x = ((resize_ref(fimg, hs, ws).astype(f32) - f32(127.5)) * f32(0.0078125))[None]
        prob, reg = _C.mtcnn_pnet_forward(model, np.ascontiguousarray(x))
        ys, xs = np.nonzero(prob[0] >= f32(th[0]))
        s = f32(scale)
        xs32, ys32 = xs.astype(f32), ys.astype(f32)
        rows = np.column_stack([np.floor((2 * xs32 + 1) / s), np.floor((2 * ys32 + 1) / s),
                                np.floor((2 * xs32 + 12) / s), np.floor((2 * ys32 + 12) / s),
                                prob[0][ys, xs], reg[0][ys, xs]]).astype(f32).reshape(-1, 9)
        levels.append(rows[nms_ref(rows, 0.5, "union")])
        scale *= factor
        minl *= factor
    b = np.concatenate(levels) if levels else np.zeros((0, 9), f32)
    b = b[nms_ref(b, 0.7, "union")]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    b = np.column_stack([b[:, 0] + b[:, 5] * bw, b[:, 1] + b[:, 6] * bh,
                         b[:, 2] + b[:, 7] * bw, b[:, 3] + b[:, 8] * bh, b[:, 4]]).astype(f32)
    b = rerec_ref(b).astype(f32)

    def crops(b, size):
        """the whole box [y-1, ey) x [x-1, ex), zeros outside the image (the original
        MTCNN's pad, not facenet-pytorch's clip-and-stretch)"""
        out, ok = [], []
        for row in b:
            x, y, ex, ey = (int(v) for v in row[:4])  # trunc toward zero
            if ey > y - 1 and ex > x - 1 and ey > 0 and ex > 0 and y - 1 < h and x - 1 < w:
                win = np.zeros((ey - y + 1, ex - x + 1, 3), f32)
                ys, xs = max(y - 1, 0), max(x - 1, 0)
                win[ys - (y - 1):min(ey, h) - (y - 1), xs - (x - 1):min(ex, w) - (x - 1)] = \
                    fimg[ys:min(ey, h), xs:min(ex, w)]
                out.append(resize_ref(win, size, size))
                ok.append(True)
            else:
                ok.append(False)
        x = (np.array(out, dtype=f32).reshape(-1, size, size, 3) - f32(127.5)) * f32(0.0078125)
        return np.ascontiguousarray(x), np.array(ok, bool)

    if len(b):
        x, ok = crops(b, 24)
        b = b[ok]
        prob, reg = _C.mtcnn_rnet_forward(model, x)
        p = prob > f32(th[1])
        b = np.column_stack([b[p, :4], prob[p]]).astype(f32)
        reg = reg[p]
        k = nms_ref(b, 0.7, "union")
        b = rerec_ref(bbreg_ref(b[k], reg[k])).astype(f32)
    pts = np.zeros((0, 5, 2), f32)
    if len(b):
        x, ok = crops(b, 48)
        b = b[ok]
        prob, reg, lm = _C.mtcnn_onet_forward(model, x)
        p = prob > f32(th[2])
        b = np.column_stack([b[p, :4], prob[p]]).astype(f32)
        reg, lm = reg[p], lm[p]
        bw, bh = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
        pts = np.stack([bw[:, None] * lm[:, :5] + b[:, :1] - 1,
                        bh[:, None] * lm[:, 5:] + b[:, 1:2] - 1], axis=2)
        b = bbreg_ref(b, reg).astype(f32)
        k = nms_ref(b, 0.7, "min")
        b, pts = b[k], pts[k]
    return b[:, :4], b[:, 4], pts


def synthetic_scene(rng, face, h=240, w=320):
    """a face photo pasted, halved, into a noisy background"""
    bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) // 2 + 60
    small = face[::2, ::2]
    y, x = 70, 150
    bg[y:y + small.shape[0], x:x + small.shape[1]] = small
    return bg


@needs_photos
def test_pipeline_matches_numpy_port(rng):
    det = gd.MTCNN(MTCNN_WEIGHTS)
    names = sorted(os.listdir(UTKFACE_DEV))
    picks = [names[i] for i in np.random.default_rng(7).choice(len(names), 3, replace=False)]
    imgs = [gd.to_rgb(os.path.join(UTKFACE_DEV, n)) for n in picks]
    imgs.append(synthetic_scene(rng, imgs[0]))
    for img in imgs:
        boxes, scores, pts = det.detect(img)
        rb, rs, rp = pipeline_ref(det._model, img)
        assert len(boxes) == len(rb) >= 1
        np.testing.assert_allclose(boxes, rb, atol=0.05)
        np.testing.assert_allclose(scores, rs, atol=1e-4)
        np.testing.assert_allclose(pts, rp, atol=0.05)


# ---- the detector on real photos ------------------------------------------------------------------


@needs_photos
def test_faces_at_the_border_keep_their_landmarks():
    """UTKFace chips are cropped tight: every face box runs past the image. The crops are
    the whole box with zeros outside (the original MTCNN), so the landmarks are those of
    the same chip inside a 100 px border of its edge pixels, within a few pixels. Clipping
    the window and stretching it (facenet-pytorch) put them 19 px off at the median,
    44 px at worst, on these 20 chips; the zero-padded crops: 3.9 and 23.6."""
    det = gd.MTCNN(MTCNN_WEIGHTS)
    names = sorted(n for n in os.listdir(UTKFACE_DEV) if n.endswith(".jpg"))
    off = []
    for i in np.random.default_rng(5).choice(len(names), 20, replace=False):
        img = gd.to_rgb(os.path.join(UTKFACE_DEV, names[i]))
        b, s, p = det.detect(img)
        b2, s2, p2 = det.detect(np.pad(img, ((100, 100), (100, 100), (0, 0)), mode="edge"))
        if len(b) == 0 or len(b2) == 0:
            continue
        j, j2 = gd.most_confident(s), gd.most_confident(s2)
        assert b[j][0] < 0 or b[j][1] < 0 or b[j][2] > img.shape[1] or b[j][3] > img.shape[0]
        off.append(np.abs(p[j] - (p2[j2] - 100)).max())
    assert len(off) >= 15
    assert np.median(off) < 8, sorted(off)
    assert max(off) < 32, sorted(off)


def _plausible(p):
    le, re, nose, ml, mr = p
    eyes_y = max(le[1], re[1])
    mouth_y = min(ml[1], mr[1])
    return le[0] < re[0] and ml[0] < mr[0] and eyes_y < nose[1] < mouth_y


@needs_photos
def test_utkface_detection_rate_and_landmarks():
    det = gd.MTCNN(MTCNN_WEIGHTS)
    names = sorted(n for n in os.listdir(UTKFACE_DEV) if n.endswith(".jpg"))
    picks = np.random.default_rng(2024).choice(len(names), min(300, len(names)), replace=False)
    found = plausible = 0
    t0 = time.perf_counter()
    for i in picks:
        boxes, scores, pts = det.detect(os.path.join(UTKFACE_DEV, names[i]))
        if len(boxes) == 0:
            continue
        found += 1
        j = gd.most_confident(scores)
        assert boxes.dtype == np.float32 and pts.shape == (len(boxes), 5, 2)
        assert np.all(scores > 0.7) and np.all(np.diff(scores) <= 0)
        plausible += _plausible(pts[j])
    elapsed = time.perf_counter() - t0
    print(f"\nUTKFace dev: {found}/{len(picks)} with a face, {plausible} plausible landmarks, "
          f"{elapsed:.1f} s", file=sys.stderr)
    assert found >= 0.95 * len(picks)
    assert plausible >= 0.95 * found


# ---- glae.detect: inputs, helpers ------------------------------------------------------------------


def _detector(tmp_path, rng):
    if HAVE_WEIGHTS:
        return gd.MTCNN(MTCNN_WEIGHTS)
    from helpers import torch_state_dict, torch_write_legacy
    for fname, sd in zip(("pnet.pt", "rnet.pt", "onet.pt"), random_state_dicts(rng)):
        torch_write_legacy(tmp_path / fname, torch_state_dict(sd))
    return gd.MTCNN(tmp_path)


def test_bad_and_odd_images(tmp_path, rng):
    det = _detector(tmp_path, rng)
    for img in [np.zeros((0, 0, 3), np.uint8), np.zeros((1, 1, 3), np.uint8),
                np.zeros((1, 1), np.uint8), np.zeros((11, 40, 3), np.uint8),
                np.zeros((0, 10), np.uint8)]:
        b, s, p = det.detect(img)
        assert b.shape == (0, 4) and s.shape == (0,) and p.shape == (0, 5, 2)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    want = det.detect(rgb)
    rgba = np.concatenate([rgb, np.full((60, 80, 1), 255, np.uint8)], axis=2)
    for b, w in zip(det.detect(rgba), want):
        np.testing.assert_array_equal(b, w)
    gray = rgb[:, :, 0]
    for b, w in zip(det.detect(gray), det.detect(np.repeat(gray[:, :, None], 3, 2))):
        np.testing.assert_array_equal(b, w)
    from PIL import Image
    Image.fromarray(rgb).save(tmp_path / "x.png")
    for b, w in zip(det.detect(tmp_path / "x.png"), want):
        np.testing.assert_array_equal(b, w)
    for b, w in zip(det.detect(Image.fromarray(gray)), det.detect(gray)):
        np.testing.assert_array_equal(b, w)
    assert_unmodified(det.detect, rgb)
    assert_no_leak(det.detect, rgb, n=20)
    with pytest.raises(ValueError, match="shape"):
        det.detect(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError, match="numeric"):
        det.detect(np.zeros((4, 4, 3), bool))
    with pytest.raises(TypeError, match="dtype"):
        _C.mtcnn_detect(det._model, np.zeros((20, 20, 3), np.float32), 20.0, 0.709,
                        (0.6, 0.7, 0.7), 0.5, (0.7, 0.7, 0.7))
    with pytest.raises(ValueError, match="factor"):
        _C.mtcnn_detect(det._model, rgb, 20.0, 1.5, (0.6, 0.7, 0.7), 0.5, (0.7, 0.7, 0.7))


def test_missing_weights(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="pnet.pt"):
        gd.MTCNN(tmp_path)
    monkeypatch.setattr(gd, "_default_weights_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match="weights_dir"):
        gd.MTCNN()


def test_detect_runs_on_its_own_thread_count(tmp_path, rng):
    """num_threads is the detector's own count (its context's): the process default is
    left alone, the results do not depend on it."""
    det = _detector(tmp_path, rng)
    before = glae.get_num_threads()
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    want = det.detect(img)
    for n in (2, None, 1):
        det.num_threads = n
        for got, w in zip(det.detect(img), want):
            np.testing.assert_array_equal(got, w)
        assert _C._omp_threads_here() == (n or before)
        assert glae.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be in"):
        _C.mtcnn_detect(det._model, img, 20.0, 0.709, (0.6, 0.7, 0.7), 0.5, (0.7, 0.7, 0.7), -1)


def test_training_keeps_its_thread_count_while_prepare_detects(tmp_path, rng):
    """A model trains with its own thread count (Config.threads, held in its context)
    while prepare, in another thread, detects and aligns faces with one thread in its
    detector's context. Before, prepare set the process-wide count to 1 for its whole run
    and every call applied that count, so the training thread's steps silently ran on one
    thread. The probe is the training thread's OpenMP count right after each step's call,
    the count that step's kernels ran with; the process-wide default is neither side's."""
    import threading

    from PIL import Image

    from glae.config import Config
    from glae.data import Record, prepare, synthetic_faces
    from glae.model import Model
    from glae.train import Dataset, Trainer

    _detector(tmp_path, rng)  # random weights in tmp_path when the shared ones are absent
    weights = MTCNN_WEIGHTS if HAVE_WEIGHTS else tmp_path
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"photo{i}.png")
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(paths[-1])
    lm = np.array([[50, 35], [70, 35], [60, 45], [52, 60], [68, 60]], np.float32)
    # one record aligned from its landmarks, so prepare succeeds whatever the detector finds
    records = [Record(str(paths[0]), 30, landmarks=lm)] + [Record(str(p), 30) for p in paths[1:]]
    images, ages = synthetic_faces(64, size=32, seed=0)
    cfg = Config(backbone="resnet18", head="gap", image_size=32, batch_size=8, stage1_epochs=3,
                 stage2_epochs=0, linear_scaling=False, seed=0, threads=2, loader_threads=1)
    default = glae.get_num_threads()
    glae.set_num_threads(3)
    try:
        trainer = Trainer(Model.from_config(cfg), cfg, Dataset(images, ages), None,
                          progress=False, log=None)
        seen = []

        class Probe:  # the engine model, recording the count of each step's kernels
            def __init__(self, core):
                self.core = core

            def __getattr__(self, name):
                return getattr(self.core, name)

            def train_step_async(self, *a, **k):
                r = self.core.train_step_async(*a, **k)
                seen.append(_C._omp_threads_here())
                return r

            def sgd_step(self, *a, **k):
                r = self.core.sgd_step(*a, **k)
                seen.append(_C._omp_threads_here())
                return r

        trainer.core = Probe(trainer.core)
        done, prepared, errors = threading.Event(), [], []

        def prepare_loop():
            try:
                while not done.is_set():
                    rep = prepare(records, tmp_path / "out.glae", size=32, detect="missing",
                                  detector_weights=weights, workers=2, progress=False)
                    prepared.append(rep.n_used)
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        other = threading.Thread(target=prepare_loop)
        other.start()
        try:
            while not prepared and not errors:  # training starts once prepare runs
                time.sleep(0.01)
            trainer.fit()
        finally:
            done.set()
            other.join()
        assert not errors, errors
        assert len(prepared) >= 2 and min(prepared) >= 1, prepared
        assert len(seen) == 2 * 3 * 8 and set(seen) == {2}, seen
        assert glae.get_num_threads() == 3  # the default: set by neither side
    finally:
        glae.set_num_threads(default)


def test_largest_and_most_confident():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 30, 20], [5, 5, 20, 20]], np.float32)
    assert gd.largest_face(boxes) == 1
    assert gd.most_confident(np.array([0.8, 0.9, 0.95])) == 2
    assert gd.largest_face(np.zeros((0, 4))) is None
    assert gd.most_confident(np.zeros(0)) is None
