"""The linear probe: multinomial logistic regression on unit-norm image embeddings (scikit-learn)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..console import warn
from ..errors import OodbenchError

LP_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def fit_linear_probe(train_z: torch.Tensor, train_y: torch.Tensor, val_z: torch.Tensor | None,
                     val_y: torch.Tensor | None, n_classes: int, c: float | None = None, seed: int = 0,
                     grid: tuple[float, ...] = LP_GRID) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Multinomial logistic regression on unit-norm embeddings; (W (C, D), b (C,), info).

    ``c`` None: the inverse regularisation strength is chosen on the validation split (highest
    accuracy, ties broken by the lower log-loss); without a validation split C = 1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    xt, yt = train_z.numpy().astype(np.float64), train_y.numpy()
    present = np.unique(yt)
    if len(present) < 2:
        raise OodbenchError("A linear probe needs at least two classes in the training split.")
    candidates = [c] if c is not None else (list(grid) if val_z is not None else [1.0])
    trials, best = [], None
    for cand in candidates:
        clf = LogisticRegression(C=float(cand), max_iter=2000, random_state=seed)
        clf.fit(xt, yt)
        row: dict[str, Any] = {"C": float(cand)}
        if val_z is not None:
            xv, yv = val_z.numpy().astype(np.float64), val_y.numpy()
            proba = clf.predict_proba(xv)
            row["val_accuracy"] = float((clf.classes_[proba.argmax(1)] == yv).mean())
            row["val_log_loss"] = float(log_loss(yv, proba, labels=clf.classes_))
            key = (row["val_accuracy"], -row["val_log_loss"])
        else:
            key = (0.0, 0.0)
        trials.append(row)
        if best is None or key > best[0]:
            best = (key, clf, row)
    _, clf, row = best
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: softmax-equivalent two-row head
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    w = torch.zeros(n_classes, coef.shape[1])
    b = torch.full((n_classes,), -1e4)  # classes absent from the training split are never predicted
    w[torch.as_tensor(clf.classes_)] = torch.as_tensor(coef, dtype=torch.float32)
    b[torch.as_tensor(clf.classes_)] = torch.as_tensor(intercept, dtype=torch.float32)
    if len(present) < n_classes:
        warn(f"linear probe: {n_classes - len(present)} class(es) have no training image; they get bias -1e4.")
    return w, b, {"chosen_C": row["C"], "trials": trials}
