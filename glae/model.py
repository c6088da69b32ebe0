"""Thin wrapper over the C model ``glae._C.Model`` (ResNet-18/50 + vanilla and balanced
heads). The public ``glae.Model`` is built on this; everything numeric is in C.

Parameters, gradients, momentum and BN buffers are 1-D float32 views of the model's flat
buffers (``params``, ``grads``, ``momentum``, ``buffers``); ``state_dict()`` gives
torchvision-layout copies (conv weights OIHW) keyed by torchvision's names.
"""
from ._lib import _C

__all__ = ["CoreModel"]


class CoreModel(_C.Model):
    """_C.Model plus dictionary import/export. Arguments: see ``_C.Model``."""

    def state_dict(self):
        """{name: array} in torchvision's layout; BN running stats included,
        num_batches_tracked not kept (see docs/model.md)."""
        return {name: self.get(name) for name, *_ in self.param_table()}

    def load_state_dict(self, state, strict=True):
        """Import arrays (numpy float32, torchvision layout). Keys ending in
        num_batches_tracked are ignored. strict: every tensor of the model must be given
        and no unknown key may appear. Returns (missing, unexpected)."""
        import numpy as np

        names = [name for name, *_ in self.param_table()]
        known = set(names)
        unexpected = [k for k in state if k not in known and not k.endswith("num_batches_tracked")]
        missing = [k for k in names if k not in state]
        if strict and (unexpected or missing):
            raise KeyError(f"load_state_dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for k in names:
            if k in state:
                self.set(k, np.ascontiguousarray(state[k], dtype=np.float32))
        return missing, unexpected
