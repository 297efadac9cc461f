"""milan_hf.hub: the folder it writes is what load_dataset reads back; pushes go to one dataset
repo in one commit (through the shared fake Hub of conftest.py)."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest

from milan_hf.hub import push_dataset, push_dataset_folder, write_dataset_folder

CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# A test set
"""


def numbered(rows: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"unit": list(range(rows)), "masks": [np.eye(2, dtype=np.uint8) * i for i in range(rows)]}
    )


def test_folder_is_sharded_and_loads_back_in_order(tmp_path):
    paths = write_dataset_folder(numbered(7), tmp_path, CARD, max_rows_per_shard=3)
    assert [p.name for p in paths] == [
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
    ]
    assert (tmp_path / "README.md").read_text() == CARD
    loaded = datasets.load_dataset(str(tmp_path), split="train")
    assert loaded["unit"] == list(range(7))
    assert np.asarray(loaded[6]["masks"]).tolist() == [[6, 0], [0, 6]]


def test_one_shard_for_a_small_set_and_one_for_an_empty_set(tmp_path):
    assert [p.name for p in write_dataset_folder(numbered(2), tmp_path / "a", CARD)] == [
        "train-00000-of-00001.parquet"
    ]
    empty = numbered(0)
    paths = write_dataset_folder(empty, tmp_path / "b", CARD, split="test")
    assert [p.name for p in paths] == ["test-00000-of-00001.parquet"]


def test_push_folder_creates_the_dataset_repo_and_uploads_once(tmp_path, fake_hub):
    write_dataset_folder(numbered(3), tmp_path, CARD)
    commit = push_dataset_folder(
        tmp_path, "someone/set", private=True, token="hf_x", commit_message="first"
    )
    (create,) = fake_hub.calls_to("create_repo")
    assert create == {"repo_id": "someone/set", "repo_type": "dataset", "private": True,
                      "exist_ok": True}  # fmt: skip
    (upload,) = fake_hub.calls_to("upload_folder")
    assert upload["repo_type"] == "dataset" and upload["commit_message"] == "first"
    assert commit.commit_message == "first"
    assert sorted(fake_hub.sent["someone/set"]) == [
        "README.md",
        "data/train-00000-of-00001.parquet",
    ]
    assert [name for name, _, _ in fake_hub.calls] == ["create_repo", "upload_folder"]


def test_push_dataset_sends_what_load_dataset_reads_and_cleans_up(fake_hub):
    push_dataset(numbered(4), "someone/set", CARD)
    uploaded = fake_hub.folder("someone/set")
    assert datasets.load_dataset(str(uploaded), split="train")["unit"] == [0, 1, 2, 3]
    staging = Path(fake_hub.calls_to("upload_folder")[0]["folder_path"])
    assert not staging.exists()  # the temporary folder is gone after the push


def test_a_failed_upload_is_raised_not_swallowed(monkeypatch, fake_hub):
    from huggingface_hub import HfApi

    def refuse(self, **kwargs):
        raise PermissionError("403 Forbidden: no write access to someone/set")

    monkeypatch.setattr(HfApi, "upload_folder", refuse)
    with pytest.raises(PermissionError, match="no write access"):
        push_dataset(numbered(1), "someone/set", CARD)
