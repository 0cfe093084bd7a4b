"""Patient-grouped, label-stratified train/val/test splits (scikit-learn), reproducible by seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pipelines.config import ConfigError

UNLABELLED = "unlabelled"


def _hold_out(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of rows held out: one fold of a StratifiedGroupKFold with about ``fraction`` of rows."""
    if fraction <= 0:
        return np.zeros(len(labels), dtype=bool)
    n_groups = len(np.unique(groups))
    largest_class = int(np.bincount(labels).max())
    n_splits = min(max(2, round(1 / fraction)), n_groups, largest_class)
    if n_splits < 2:
        raise ConfigError(f"only {n_groups} patient(s) with labels: too few to split; label more studies "
                          "or set split.val=0 and split.test=0")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(folds.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def assign_splits(frame: pd.DataFrame, val: float, test: float, seed: int) -> pd.Series:
    """Split name per row of ``frame`` (columns ``patient_key`` and ``label``; NaN label = unlabelled).

    Test is carved first, then validation from the rest, each as one fold of a StratifiedGroupKFold, so no
    patient appears in two splits and the label balance is kept. Fractions are approximate (whole patients).
    """
    split = pd.Series(UNLABELLED, index=frame.index, dtype=object)
    labelled = frame[frame["label"].notna()]
    if labelled.empty:
        return split
    labels = labelled["label"].astype(int).to_numpy()
    # Each patient is named by its first study UID, not its pseudonym: the fold assignment then depends on
    # the seed and the cohort only, not on the (per-site, per-folder) pseudonymization key.
    first_study = labelled.groupby("patient_key")["study_uid"].transform("min")
    groups = first_study.to_numpy()
    is_test = _hold_out(labels, groups, test, seed)
    rest = ~is_test
    is_val = np.zeros(len(labels), dtype=bool)
    if val > 0 and rest.any():
        rest_idx = np.flatnonzero(rest)
        held = _hold_out(labels[rest], groups[rest], val / (1 - test), seed + 1)
        is_val[rest_idx[held]] = True
    names = np.where(is_test, "test", np.where(is_val, "val", "train"))
    split.loc[labelled.index] = names
    return split
