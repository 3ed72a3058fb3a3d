"""Per-sample scores of one (model, benchmark, method) and how they are kept on disk.

A :class:`ScoreRecord` is what ``oodbench score`` writes and ``oodbench report`` reads:
everything a report needs, with no features (so reports are instant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ScoreRecord:
    """Scores of one method on the ID test split and each OoD split (higher = more ID).

    Attributes:
        model: short label of the checkpoint (``"zeroshot"``, ``"ft_lora"``...).
        model_key: store directory name of the model (name + fingerprint prefix).
        fingerprint: sha256 of the weights used.
        benchmark: benchmark name.
        method: scorer registry name.
        params: hyperparameters actually used (after defaults/overrides/tuning).
        head: head used for logits (``"zeroshot"`` or ``"linear"``).
        id_scores: (N_id,) scores of the ID test split.
        ood_scores: OoD split name -> (N_ood,) scores.
        groups: OoD split name -> ``"near"`` or ``"far"``.
        accuracy: top-1 accuracy of the head on the ID test split (NaN if unknown).
        id_correct: (N_id,) bool, head prediction correct (for misclassification analyses).
        provenance: store path, oodbench version, feature files, creation time, ...
    """

    model: str
    model_key: str
    fingerprint: str
    benchmark: str
    method: str
    params: dict[str, Any]
    head: str
    id_scores: np.ndarray
    ood_scores: dict[str, np.ndarray]
    groups: dict[str, str]
    accuracy: float = float("nan")
    id_correct: np.ndarray | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Method label with non-default parameters, e.g. ``knn(k=10)``."""
        extra = self.provenance.get("overrides") or {}
        if not extra:
            return self.method
        return f"{self.method}({', '.join(f'{k}={v}' for k, v in sorted(extra.items()))})"
