"""The real datasets ship with the repository (data/, xz) and read back whole, from there or from
WILLOW_DATA_DIR; row counts are those of data/README.md."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from benchmarks.data import data_available, data_dir, data_path

pytestmark = pytest.mark.data

ROWS = {
    "sms_spam.tsv": (5_572, {"sep": "\t"}),
    "airline_tweets.csv": (14_640, {}),
    "adult.data": (32_561, {"skipinitialspace": True}),
    "california_housing.csv": (20_640, {}),
    "movielens-small/ratings.csv": (100_836, {}),
    "movielens-small/movies.csv": (9_742, {}),
    "movielens-small/tags.csv": (3_683, {}),
}


def test_every_dataset_ships_compressed_and_reads_whole(monkeypatch):
    monkeypatch.delenv("WILLOW_DATA_DIR", raising=False)
    assert data_dir().name == "data" and (data_dir() / "README.md").exists()
    for name, (rows, options) in ROWS.items():
        path = data_path(name)
        assert path.suffix == ".xz" and path.parent == (data_dir() / name).parent, path
        frame = pd.read_csv(path, **options)
        assert len(frame) == rows, (name, len(frame))
    labels = pd.read_csv(data_path("sms_spam.tsv"), sep="\t")["Label"]
    assert (labels == "spam").sum() == 747


def test_willow_data_dir_overrides_with_plain_or_compressed_files(monkeypatch, tmp_path):
    (tmp_path / "sms_spam.tsv").write_text("Label\tSMS\nham\thello\nspam\twin now\n")
    monkeypatch.setenv("WILLOW_DATA_DIR", str(tmp_path))
    assert data_path("sms_spam.tsv") == tmp_path / "sms_spam.tsv"
    assert len(pd.read_csv(data_path("sms_spam.tsv"), sep="\t")) == 2
    assert not data_available("adult.data")
    with pytest.raises(FileNotFoundError, match=r"adult\.data.*WILLOW_DATA_DIR"):
        data_path("adult.data")
    monkeypatch.delenv("WILLOW_DATA_DIR")
    shutil.copy(data_path("adult.data"), tmp_path / "adult.data.xz")
    monkeypatch.setenv("WILLOW_DATA_DIR", str(tmp_path))
    assert data_path("adult.data") == tmp_path / "adult.data.xz"
