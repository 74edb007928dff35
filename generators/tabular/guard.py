"""The privacy guard: sampled rows that sit on a training row are rejected, whatever the model.

Distance is the Gower distance the report's DCR uses (`evaluate.GowerIndex`): numerical columns
scaled by their training range, categories 0 when equal and 1 when not, averaged over the
learned columns. The reference is how close real rows sit to each other: each training row's
distance to its nearest *other* training row. A sampled row is rejected

- when it is an exact copy of a training row (distance 0), always; and
- when it is closer to its nearest training row than `quantile` of the training rows are to
  theirs (default 0.05: nearer than 95% of real rows sit to one another; 0: only exact copies).

So the rule needs no holdout and is the same for every synthesizer. Rejected rows are counted
under `near_copy` with the constraints' rejections, and sampling draws more rows to replace them.
A table whose real rows repeat (many at distance 0) still gets no exact copies: a sampler that
cannot avoid them stops with the rejection rate, like an impossible constraint.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from generators.tabular.data import TableMeta
from generators.tabular.evaluate import GowerIndex

LABEL = "near_copy"


class NearCopyGuard:
    """keep(frame) -> (mask of rows far enough from every training row, rejections by label)."""

    label = LABEL

    def __init__(self, train: pd.DataFrame, meta: TableMeta, quantile: float = 0.05):
        self.index = GowerIndex(train, meta)
        self.threshold = float(np.quantile(self.index.nearest_other(train), quantile)) if quantile > 0 else 0.0

    def keep(self, frame: pd.DataFrame) -> tuple[np.ndarray, Counter]:
        distance = self.index.distances(frame)[:, 0]
        keep = (distance > 0) & (distance >= self.threshold)
        return keep, +Counter({LABEL: int(np.sum(~keep))})
