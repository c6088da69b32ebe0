"""Every number the CPU engine computes on a fixed small run, saved for a bitwise
before/after comparison of a change that must not move any result (a refactor):

    python bench/bitwise.py save before.npz      # on the old commit
    python bench/bitwise.py save after.npz       # on the new one
    python bench/bitwise.py compare before.npz after.npz

The run trains ResNet-18 fr+pa, ResNet-18 gap and ResNet-50 fr for one epoch of each stage
on synthetic faces (a fixed index split, not a protocol split, so a change to the split
generator does not move it), predicts with every route and computes the metric report.
Builds on one machine with the same flags give identical bytes; -march=native builds on
different CPUs need not."""
import sys

import numpy as np


def capture():
    import glae
    from glae.data import synthetic_faces

    out = {}
    images, ages = synthetic_faces(300, size=32)
    tr, va = np.arange(240), np.arange(240, 300)
    for bb, head in [("resnet18", "fr+pa"), ("resnet18", "gap"), ("resnet50", "fr")]:
        m = glae.Model(backbone=bb, head=head, image_size=32, batch_size=16, stage1_epochs=1,
                       stage2_epochs=1, base_lr1=0.005, base_lr2=0.002, linear_scaling=False,
                       seed=3, threads=2)
        t = m.fit((images[tr][:96], ages[tr][:96]), (images[va][:32], ages[va][:32]),
                  progress=False, log=None)
        key = f"{bb}_{head}"
        for route in ("vanilla", "balanced", "smaller", "bigger"):
            p, h = m.predict(images[va][:24], route=route, return_head=True)
            out[f"{key}_pred_{route}"], out[f"{key}_head_{route}"] = np.asarray(p), np.asarray(h)
        out[f"{key}_params"] = np.array(m.core.params, copy=True)
        out[f"{key}_losses"] = np.array(sorted(t.state["loss_sums"].items()), dtype=object).astype(str)
        rep = glae.metrics.report(ages[va][:24], out[f"{key}_pred_smaller"], train_ages=ages[tr][:96],
                                  choice=out[f"{key}_head_smaller"])
        flatten(out, f"{key}_rep_", rep)
    return out


def flatten(out, prefix, d):
    for k, v in d.items():
        if isinstance(v, dict):
            flatten(out, f"{prefix}{k}.", v)
            continue
        try:
            out[prefix + k] = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            out[prefix + k] = np.asarray(str(v))


def compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    bad = 0
    for k in sorted(set(a.files) | set(b.files)):
        if k not in a.files or k not in b.files:
            print("only in one file:", k)
            bad += 1
        elif a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes():
            print("differs:", k)
            bad += 1
    print(f"{len(a.files)} arrays, {bad} differ")
    return bad


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "save":
        arrays = capture()
        np.savez(sys.argv[2], **arrays)
        print(f"saved {len(arrays)} arrays to {sys.argv[2]}")
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(1 if compare(sys.argv[2], sys.argv[3]) else 0)
    else:
        sys.exit(__doc__)
