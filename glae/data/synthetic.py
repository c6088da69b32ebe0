"""Synthetic face-like images whose appearance changes with age: a stand-in so that the
pipeline (prepare, loader, training, evaluation, notebooks) runs anywhere without real
photographs. It is NOT a benchmark: an error measured on it says nothing about accuracy on
real faces. It only shows that the machinery learns what is learnable.

What changes with age (a = age in years), all smoothly:
- proportions (growth g = min(a/18, 1)^0.8): children have a rounder, wider face, eyes
  lower on the face (a larger forehead), larger eyes and irises, a smaller mouth;
- ageing (o = clip((a-25)/55, 0, 1)): forehead lines, nasolabial folds and under-eye
  shadows with amplitude o, skin slightly darker and less saturated, thinner lips, a
  hairline that may recede;
- hair greyness: a logistic in age centred at 50 years, for hair and eyebrows.
Nuisance that does not depend on age: face position and scale jitter, skin tone, hair
colour, background colour, a lighting gain and gradient, pixel noise.

Ages follow a long-tailed histogram shaped like UTKFace's decade counts (see AGE_DECADES):
many 20-39, few over 70. Everything is vectorised NumPy in float32 and deterministic from
`seed`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["AGE_DECADES", "TRAITS", "age_pmf", "sample_ages", "synthetic_faces", "synthetic_identities",
           "write_synthetic"]

# UTKFace image counts per decade 0-9, 10-19, ..., 90-99, 100+ (shared/data/README.md).
AGE_DECADES = (756, 358, 1741, 1072, 578, 543, 319, 168, 137, 32, 7)


def age_pmf(max_age: int = 100) -> np.ndarray:
    """Probabilities of the integer ages 0..max_age: each decade's UTKFace count spread
    evenly over its years (the 100+ count on 100..104), smoothed by a 5-year triangle so
    the density has no steps, then clipped to max_age (the tail folds into the last age)."""
    years = np.zeros(110)
    for d, c in enumerate(AGE_DECADES):
        lo = 10 * d
        hi = lo + (10 if d < 10 else 5)
        years[lo:hi] = c / (hi - lo)
    kernel = np.array([1, 2, 3, 2, 1], float) / 9.0
    smooth = np.convolve(np.pad(years, 2, mode="edge"), kernel, mode="valid")
    smooth[105:] = 0
    pmf = smooth[: max_age + 1].copy()
    pmf[max_age] += smooth[max_age + 1:].sum()
    return pmf / pmf.sum()


def sample_ages(n: int, seed: int = 0, max_age: int = 100) -> np.ndarray:
    """n integer ages (float32) drawn from age_pmf."""
    rng = np.random.default_rng([seed, 1])
    return rng.choice(max_age + 1, size=int(n), p=age_pmf(max_age)).astype(np.float32)


def _ellipse(X, Y, cx, cy, ax, ay, px, radius=False):
    """Soft ellipse mask (about one pixel of edge) and its squared normalised radius d2.
    1 - d2 ~ 2 (1 - d) near the edge, so no square root is needed."""
    k = 0.5 * ax * px
    qx = ((X - cx) / ax) ** 2  # (B, 1, S): the separable parts stay small
    qy = ((Y - cy) / ay) ** 2  # (B, S, 1)
    m = (k - qx * k) - qy * k  # the one full-size operation
    np.clip(m, 0.0, 1.0, out=m)
    return (m, qx + qy) if radius else m


def _lerp(img, color, m):
    # channel-first: img (3,B,S,S), color (3,B,1,1) or (3,) , m (B,S,S); in place
    color = np.asarray(color, np.float32)
    if color.ndim == 1:
        color = color.reshape(3, 1, 1, 1)
    img += m * (color - img)
    return img


def _rgb(v):
    # a per-image colour (B,1,1,3) -> channel-first (3,B,1,1)
    return np.ascontiguousarray(np.moveaxis(v, -1, 0))


# The draws of _render that belong to a person rather than to a photograph: given as
# `traits` (each a number in [0, 1) per image), they replace the random draw of that name
# (synthetic_identities); everything else (position, scale, background, lighting, noise)
# stays random per image.
TRAITS = ("grey_onset", "face_length", "skin", "hair", "eye_size", "wrinkle_freq",
          "wrinkle_phase", "wrinkle_amount", "recede")


def _render(ages, S, rng, traits=None):
    f32 = np.float32
    B = len(ages)

    def u(lo, hi, name=None):
        v = rng.uniform(lo, hi, (B, 1, 1)).astype(f32)  # drawn always: the sequence stays put
        if traits is not None and name in traits:
            return (lo + (hi - lo) * np.asarray(traits[name], f32)).reshape(B, 1, 1).astype(f32)
        return v
    a = ages.astype(f32).reshape(B, 1, 1)
    g = np.minimum(a / 18.0, 1.0) ** f32(0.8)  # growth
    o = np.clip((a - 25.0) / 55.0, 0.0, 1.0)  # ageing
    # hair greyness: onset differs between people (40-60 years)
    grey = 1.0 / (1.0 + np.exp(-(a - u(40.0, 60.0, "grey_onset")) / 7.0))

    c = (np.arange(S, dtype=f32) + 0.5) / S * 2 - 1
    X, Y = c.reshape(1, 1, S), c.reshape(1, S, 1)
    px = f32(S / 2.0)  # pixels per unit

    sc = u(0.88, 1.08)
    cx, cy = u(-0.07, 0.07), u(-0.05, 0.09)
    fw = 0.56 * sc * (1.0 + 0.10 * (1.0 - g))
    fh = fw * (1.02 + 0.26 * g) * u(0.94, 1.06, "face_length")  # people differ in face length too

    # colours (nuisance: skin tone, hair colour, background)
    t = u(0, 1, "skin")
    skin = (1 - t)[..., None] * np.array([0.96, 0.80, 0.69], f32) + t[..., None] * np.array([0.48, 0.32, 0.23], f32)
    skin = skin * (1.0 - 0.10 * o)[..., None]
    lum = skin.mean(-1, keepdims=True)
    skin = skin + (lum - skin) * (0.35 * o)[..., None]  # less saturated with age
    h = u(0, 1, "hair")
    hair = (1 - h)[..., None] * np.array([0.10, 0.07, 0.05], f32) + h[..., None] * np.array([0.75, 0.60, 0.35], f32)
    hair = hair + (np.array([0.80, 0.80, 0.82], f32) - hair) * grey[..., None]
    skin, hair = _rgb(skin), _rgb(hair)
    bg = _rgb(rng.uniform(0.15, 0.9, (B, 1, 1, 3)).astype(f32))

    img = np.empty((3, B, S, S), f32)  # channel-first while drawing: per-channel colours broadcast fast
    img[:] = bg
    img += 0.08 * Y * u(-1, 1)  # background gradient

    # hair mass behind/around the head
    hm = _ellipse(X, Y, cx, cy - 0.12 * fh, fw * 1.15, fh * 1.02, px)
    hm = hm * (Y < cy + 0.35 * fh)
    _lerp(img, hair, hm)

    # face with a little shading towards its edge
    fm, fd = _ellipse(X, Y, cx, cy, fw, fh, px, radius=True)
    _lerp(img, skin * (1.0 - 0.18 * fd), fm)

    eye_y = cy + fh * (0.10 - 0.26 * g)
    ex = fw * 0.40
    er = fw * (0.21 - 0.08 * g) * u(0.88, 1.12, "eye_size")

    # wrinkles: forehead lines, nasolabial folds, under-eye shadows (amplitude o)
    inside = fm * (fd < 0.85)
    freq = u(11, 14, "wrinkle_freq") / fh
    forehead = (Y < eye_y - 1.6 * er) * (Y > cy - 0.75 * fh)
    lines = np.cos(2 * np.pi * freq * (Y - cy + 0.02 * np.sin(6 * X)) + u(0, 6.3, "wrinkle_phase"))
    o = o * u(0.6, 1.4, "wrinkle_amount")  # some people wrinkle more
    wr = 0.22 * o * forehead * np.maximum(lines, 0) ** 4
    mouth_y = cy + fh * (0.52 + 0.04 * g)
    for side in (-1.0, 1.0):
        # a fold from beside the nose down to the mouth corner
        x0, y0 = cx + side * fw * 0.18, eye_y + 2.0 * er
        x1, y1 = cx + side * fw * 0.36, mouth_y + 0.02
        dx, dy = x1 - x0, y1 - y0
        tpar = np.clip(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        dist2 = (X - x0 - tpar * dx) ** 2 + (Y - y0 - tpar * dy) ** 2
        wr = wr + 0.30 * o * np.maximum(1.0 - dist2 * (px / 1.5) ** 2, 0.0)
        bag = _ellipse(X, Y, cx + side * ex, eye_y + 1.35 * er, er * 1.1, er * 0.45, px)
        wr = wr + 0.22 * o * bag
    img *= 1.0 - wr * inside

    # children's cheeks are pinker
    for side in (-1.0, 1.0):
        ck = np.maximum(1.0 - ((X - cx - side * fw * 0.5) ** 2 + (Y - cy - fh * 0.25) ** 2) / (0.09 * fw * fw), 0)
        img[0] += 0.10 * (1 - g) * ck * fm
        img[2] -= 0.04 * (1 - g) * ck * fm

    # hairline / fringe: lower on the face in children's proportions, may recede with age
    recede = u(0, 1, "recede")
    hairline = cy - fh * (0.62 - 0.10 * (1 - g) + 0.22 * o * recede)
    fringe = fm * np.clip((hairline - Y) * px, 0, 1)
    _lerp(img, hair, fringe)

    # eyes, irises, eyebrows
    for side in (-1.0, 1.0):
        em = _ellipse(X, Y, cx + side * ex, eye_y, er, er * (0.62 - 0.08 * g), px)
        _lerp(img, np.array([0.93, 0.93, 0.90], f32), em)
        im_ = _ellipse(X, Y, cx + side * ex, eye_y, er * 0.55, er * 0.55, px)
        _lerp(img, np.array([0.20, 0.13, 0.08], f32), im_ * em)
        bm = _ellipse(X, Y, cx + side * ex, eye_y - er * 1.25, er * 1.15, er * 0.22 + 0.5 / px, px)
        _lerp(img, hair * 0.8, bm)

    # nose shadow and mouth (lips thin with age, mouth widens with growth)
    nm = _ellipse(X, Y, cx, (eye_y + mouth_y) / 2 + 0.02, fw * 0.06, fh * 0.12, px)
    img *= 1.0 - 0.12 * nm
    mm = _ellipse(X, Y, cx, mouth_y, fw * (0.22 + 0.10 * g), fh * (0.075 - 0.04 * o) + 0.6 / px, px)
    _lerp(img, skin * np.array([1.0, 0.55, 0.55], f32).reshape(3, 1, 1, 1) * 0.85, mm)

    # lighting: gain and a directional gradient, then sensor noise
    ang = u(0, 2 * np.pi)
    light = u(0.72, 1.18) * (1.0 + u(0, 0.25) * (np.cos(ang) * X + np.sin(ang) * Y))
    img *= light
    noise = rng.random((B, S, S), dtype=f32)  # luminance noise, sd 0.06 / sqrt(12) ~ 0.017
    noise -= 0.5
    img += noise * f32(0.06)
    img *= 255.0
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return np.moveaxis(img.astype(np.uint8), 0, -1)


def synthetic_faces(n: int = 1000, size: int = 64, seed: int = 0, ages=None, chunk_pixels: int = 131_072):
    """Deterministic synthetic faces: (images uint8 (n, size, size, 3), ages float32 (n,)).

    ages: optional given ages (float, 0..100); by default drawn from age_pmf. The same
    (n, size, seed, ages) always give the same images. Rendering goes in chunks of about
    `chunk_pixels` pixels, each with its own generator derived from (seed, chunk), so the
    memory stays small at 224 px."""
    n, size = int(n), int(size)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if ages is None:
        ages = sample_ages(n, seed)
    else:
        ages = np.asarray(ages, dtype=np.float32).reshape(-1)
        if len(ages) != n:
            raise ValueError(f"ages has {len(ages)} entries, n is {n}")
        if not np.all(np.isfinite(ages)) or np.any(ages < 0):
            raise ValueError("ages must be finite and >= 0")
    out = np.empty((n, size, size, 3), np.uint8)
    step = max(1, int(chunk_pixels) // (size * size))
    for k, s in enumerate(range(0, n, step)):
        rng = np.random.default_rng([seed, 2, k])
        out[s:s + step] = _render(ages[s:s + step], size, rng)
    return out, ages


def synthetic_identities(n_ids: int = 100, per_id: int = 10, size: int = 64, seed: int = 0,
                         age_spread: float = 3.0, chunk_pixels: int = 131_072):
    """Synthetic people for identity pre-training: (images uint8 (n_ids * per_id, size,
    size, 3), identities int64, ages float32), per_id photographs of each of n_ids people.

    A person is fixed by the draws of TRAITS (face length, skin tone, hair colour, eye
    size, the onset of grey hair, the wrinkle pattern, a receding hairline) and an age
    drawn from age_pmf; each photograph of them has its own age within +-age_spread years
    and its own nuisance (face position and scale, background, lighting, noise). So the
    identity is in the face and not in the picture, as with real photographs, and a
    network can only tell people apart by learning the face. Not real faces: a stand-in
    to check that pre-training learns, not a benchmark."""
    n_ids, per_id, size = int(n_ids), int(per_id), int(size)
    if n_ids < 1 or per_id < 1:
        raise ValueError(f"n_ids and per_id must be >= 1, got {n_ids}, {per_id}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng([seed, 3])
    person = {name: rng.random(n_ids) for name in TRAITS}
    base_age = sample_ages(n_ids, seed)
    ids = np.repeat(np.arange(n_ids, dtype=np.int64), per_id)
    ages = np.clip(base_age[ids] + rng.uniform(-age_spread, age_spread, len(ids)), 0, 100)
    ages = np.round(ages).astype(np.float32)
    n = len(ids)
    out = np.empty((n, size, size, 3), np.uint8)
    step = max(1, int(chunk_pixels) // (size * size))
    for k, s in enumerate(range(0, n, step)):
        part = ids[s:s + step]
        out[s:s + step] = _render(ages[s:s + step], size, np.random.default_rng([seed, 4, k]),
                                  traits={name: v[part] for name, v in person.items()})
    return out, ids, ages


def write_synthetic(path, n: int = 1000, size: int = 64, seed: int = 0, identities=None) -> str:
    """Write synthetic_faces(n, size, seed) as a packed file (paths "synthetic:<i>", sigma
    NaN, identities -1 unless given); returns the path."""
    from .packed import write_packed

    images, ages = synthetic_faces(n, size, seed)
    return write_packed(path, images, ages, identities=identities,
                        paths=[f"synthetic:{i}" for i in range(n)],
                        meta={"source": "glae.data.synthetic", "n": n, "size": size, "seed": seed,
                              "note": "synthetic stand-in, not real faces; not a benchmark"})
