"""Looking ids up in sorted id arrays: the one place this mapping is done."""

from __future__ import annotations

import numpy as np


def index_in_sorted(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in the sorted unique array ``sorted_ids``, -1 where absent.

    Shapes: ``sorted_ids`` (n,), ``ids`` (m,) -> (m,) int64.
    """
    ids = np.asarray(ids, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[pos] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
    return np.where(found, pos, -1).astype(np.int64)
