"""Labels CSV, pseudonymization and patient-grouped stratified splits."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from pipelines.config import ConfigError
from pipelines.data.labels import parse_label, read_labels
from pipelines.data.privacy import Pseudonymizer, load_or_create_key
from pipelines.data.splits import UNLABELLED, assign_splits


def test_labels_accept_numbers_and_words_and_report_bad_rows(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("StudyInstanceUID,label\n1.2.1,0\n1.2.2, Abnormal\n1.2.3,normal\n1.2.4,maybe\n"
                    "1.2.5,1\n1.2.5,0\n1.2.6,1\n1.2.6,1\n")
    labels, rejected = read_labels(path)
    assert labels == {"1.2.1": 0, "1.2.2": 1, "1.2.3": 0, "1.2.6": 1}
    assert [(r.path, r.reason_code) for r in rejected] == [("labels.csv:5", "bad_label"),
                                                           ("labels.csv:7", "conflicting_label")]
    assert parse_label(" 1 ") == 1 and parse_label("ABNORMAL") == 1 and parse_label("2") is None


def test_labels_custom_columns_and_clear_errors(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("study,y\n9.9,1\n")
    assert read_labels(path, "study", "y")[0] == {"9.9": 1}
    with pytest.raises(ConfigError, match="lacks column.*label"):
        read_labels(path)
    with pytest.raises(ConfigError, match="not found"):
        read_labels(tmp_path / "missing.csv")


def test_pseudonyms_are_keyed_stable_and_not_the_identifier(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDVIT_TEST_KEY", raising=False)
    key_file = tmp_path / "k" / ".key"
    key = load_or_create_key("MEDVIT_TEST_KEY", key_file)
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"
    assert load_or_create_key("MEDVIT_TEST_KEY", key_file) == key
    p = Pseudonymizer(key)
    assert p("PID123") == p("PID123") != p("PID124")
    assert "PID123" not in p("PID123") and len(p("PID123")) == 18
    assert Pseudonymizer(b"other")("PID123") != p("PID123")
    monkeypatch.setenv("MEDVIT_TEST_KEY", "from-env")
    assert load_or_create_key("MEDVIT_TEST_KEY", key_file) == b"from-env"


def _cohort(n_patients: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(rng.random() < 0.3)
        for s in range(int(rng.integers(1, 4))):  # several studies/series per patient
            rows.append({"patient_key": f"p{p}", "study_uid": f"{p}.{s}", "label": label})
    rows += [{"patient_key": "u1", "study_uid": "u.1", "label": None}]
    frame = pd.DataFrame(rows)
    frame["label"] = frame["label"].astype("Int64")
    return frame


def test_splits_group_patients_keep_balance_and_reproduce():
    frame = _cohort(120)
    split = assign_splits(frame, val=0.15, test=0.15, seed=3)
    assert split[frame["label"].isna()].eq(UNLABELLED).all()
    per_patient = frame.assign(split=split).groupby("patient_key")["split"].nunique()
    assert (per_patient == 1).all()  # no patient in two splits
    labelled = frame["label"].notna()
    shares = split[labelled].value_counts(normalize=True)
    assert 0.08 < shares["test"] < 0.25 and 0.08 < shares["val"] < 0.25
    overall = frame.loc[labelled, "label"].mean()
    for name in ("train", "val", "test"):
        assert abs(frame.loc[split == name, "label"].mean() - overall) < 0.12
    assert split.equals(assign_splits(frame, val=0.15, test=0.15, seed=3))
    assert not split.equals(assign_splits(frame, val=0.15, test=0.15, seed=4))


def test_splits_without_val_or_test_and_too_few_patients():
    frame = _cohort(30)
    split = assign_splits(frame, val=0.0, test=0.0, seed=0)
    assert set(split.unique()) == {"train", UNLABELLED}
    tiny = pd.DataFrame({"patient_key": ["a", "a"], "study_uid": ["1", "2"], "label": [0, 1]})
    with pytest.raises(ConfigError, match="too few"):
        assign_splits(tiny, val=0.2, test=0.2, seed=0)


def test_splits_do_not_depend_on_the_pseudonymization_key():
    frame = _cohort(80)
    other_key = frame.assign(patient_key=frame["patient_key"].map(lambda k: f"x{hash(k) % 997}_{k}"))
    assert assign_splits(frame, 0.2, 0.2, seed=5).equals(assign_splits(other_key, 0.2, 0.2, seed=5))
