"""A tensor computed from a weight (a packed or folded copy of it), kept until the weight changes."""

from __future__ import annotations

from collections.abc import Callable

import torch


class DerivedWeight:
    """Holds ``make(weight)`` between calls and remakes it when the weight changed: new storage,
    dtype or device, or an in-place update (optimizer step, ``load_state_dict``), which bumps the
    tensor's version counter. Made without autograd: for inference paths only."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None

    def get(self, weight: torch.Tensor, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        # an inference tensor (made under torch.inference_mode) has no version counter: only a new
        # storage, dtype or device is seen for it (it cannot be updated in place outside that mode)
        version = None if weight.is_inference() else weight._version
        key = (weight.data_ptr(), version, weight.dtype, weight.device)
        if self._value is None or key != self._key:
            with torch.no_grad():
                self._value = make(weight.detach())
            self._key = key
        return self._value

    @property
    def value(self) -> torch.Tensor | None:
        """The copy held now (made for the weight as it was then), or None before the first ``get``."""
        return self._value
