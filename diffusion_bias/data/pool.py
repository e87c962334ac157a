"""The pool: all items one experiment may draw its twin splits from.

Every source (`data.grammar_pool`, `data.images`) returns one; `data.sources`
builds the one a config names and draws the twins' splits from it.
"""

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from diffusion_bias import setting as setting_lib
from diffusion_bias.exact import grammar as grammar_lib


@dataclasses.dataclass(frozen=True, eq=False)
class Pool:
    """All items one experiment may draw its splits from.

    Attributes:
        items: the items, read-only; int32 [N, L] tokens when `kind` is "tokens",
            float32 [N, H, W, C] images in [-1, 1] when `kind` is "images".
        kind: "tokens" or "images".
        info: small JSON-friendly dict of provenance (source name, sizes, seeds).
        grammar: the grammar that generated the tokens (token pools only).
        labels: int64 [N] class labels where the source has them cheaply, else None.
    """

    items: np.ndarray
    kind: str
    info: dict[str, Any]
    grammar: grammar_lib.Grammar | None = None
    labels: np.ndarray | None = None

    def __post_init__(self):
        items = read_only(self.items)
        setting_lib.of(self.kind).check_pool_items(items)
        object.__setattr__(self, "items", items)
        if self.labels is not None:
            labels = read_only(self.labels)
            if labels.shape != items.shape[:1]:
                raise ValueError(
                    f"labels must have shape [N] = {items.shape[:1]}, got {labels.shape}"
                )
            object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return self.items.shape[0]


def read_only(array: npt.ArrayLike) -> np.ndarray:
    """A read-only view of `array`."""
    # A view has its own flags: the pool is read-only without copying (CelebA is
    # ~0.7 GB) and without changing the flags of the caller's array.
    view = np.asarray(array).view()
    view.setflags(write=False)
    return view
