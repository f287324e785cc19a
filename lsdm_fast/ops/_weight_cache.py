"""A cache for values derived from weight tensors (packed, padded or converted copies).

Keyed on the source tensors' identity, not their address: an entry is reused only while every
source is the same live Python object, at the same storage address and the same version
counter. A tensor freed and replaced by another at the same address (an EMA copy, a reloaded
checkpoint) fails the identity check, because the cache holds its sources only weakly; an
in-place update (optimizer step, `load_state_dict`, `copy_` under no_grad) bumps the version.
Not detected: writes through `.data`, which has its own version counter; rebuild with
`clear()` after such writes.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Callable, Hashable, Sequence, TypeVar

import torch

T = TypeVar("T")


class DerivedCache:
    def __init__(self, maxsize: int = 16):
        self.maxsize = maxsize
        self._entries: OrderedDict = OrderedDict()

    @staticmethod
    def _stamp(t: torch.Tensor):
        return (t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device)

    def get(self, sources: Sequence[torch.Tensor], extra: Hashable, build: Callable[[], T]) -> T:
        """build() once per (sources, extra); again whenever a source changed or was replaced. Inference-mode
        tensors have no version counter, so nothing derived from them is cached (built every call)."""
        if any(t.is_inference() for t in sources):
            return build()
        key = (tuple(id(t) for t in sources), extra)
        hit = self._entries.get(key)
        if hit is not None:
            refs, stamps, value = hit
            if all(r() is t for r, t in zip(refs, sources)) and stamps == tuple(self._stamp(t) for t in sources):
                self._entries.move_to_end(key)
                return value
        value = build()
        self._entries[key] = (tuple(weakref.ref(t) for t in sources), tuple(self._stamp(t) for t in sources), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
