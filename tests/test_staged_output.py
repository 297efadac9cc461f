"""milan_hf.staged_output: outputs are swapped in whole, and never over a user's files."""

from __future__ import annotations

import pytest

from milan_hf.staged_output import (
    check_output_location,
    foreign_entries,
    is_staging_leftover,
    remove_stale_staging,
    require_own_output,
    staged_directory,
    staged_file,
    write_text_atomically,
)


def test_staged_directory_swaps_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with staged_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"

    with pytest.raises(RuntimeError), staged_directory(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"  # the old complete version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left

    with staged_directory(target) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_file_and_text(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    with staged_file(path, newline="") as handle:
        handle.write("a,b\r\n")
    assert path.read_bytes() == b"a,b\r\n"
    with pytest.raises(ValueError), staged_file(path) as handle:
        handle.write("partial")
        raise ValueError("crash")
    assert path.read_bytes() == b"a,b\r\n"
    write_text_atomically(path, "é")
    assert path.read_text(encoding="utf-8") == "é"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]


def test_stale_staging_is_found_by_the_public_names(tmp_path):
    (tmp_path / ".out.partial-abc").mkdir()
    (tmp_path / ".out.old-1234").mkdir()
    (tmp_path / ".other.partial-x").mkdir()
    (tmp_path / ".hidden").mkdir()  # a user's, not a staging leftover
    assert is_staging_leftover(tmp_path / ".out.partial-abc")
    assert not is_staging_leftover(tmp_path / ".hidden")
    remove_stale_staging(tmp_path, "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", ".other.partial-x"]
    remove_stale_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden"]
    remove_stale_staging(tmp_path / "missing")  # nothing to do, no error


def test_foreign_entries_and_the_ownership_rule(tmp_path):
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "meta.json").write_text("{}")
    (out / "thumbs" / "build1").mkdir(parents=True)
    (out / ".report-x.tmp").mkdir()
    owned = ["data", "thumbs/build1", ".report-*.tmp"]
    require_own_output(out, metadata_file="meta.json", owned=owned)  # all of it milan_hf's
    assert foreign_entries(out, ["meta.json", *owned]) == []

    (out / "thumbs" / "mine").mkdir()
    (out / "notes.txt").write_text("mine")
    assert foreign_entries(out, ["meta.json", *owned]) == ["notes.txt", "thumbs/mine/"]
    with pytest.raises(FileExistsError, match=r"notes\.txt, thumbs/mine/.*nothing was touched"):
        require_own_output(out, metadata_file="meta.json", owned=owned)
    (out / "meta.json").unlink()
    with pytest.raises(FileExistsError, match="holds no meta.json"):
        require_own_output(out, metadata_file="meta.json", owned=owned)
    require_own_output(tmp_path / "new", metadata_file="meta.json", owned=owned)  # missing: ok


def test_check_output_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inputs = tmp_path / "images"
    inputs.mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert check_output_location("results", [inputs, "resnet18", None]).name == "results"
    for output, message in [
        ("file.txt", "is an existing file"),
        (".", "is the working directory"),
        ("..", "is the working directory or holds it"),
        ("images", "overlaps the input"),
        ("images/out", "overlaps the input"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_output_location(output, [inputs], flag="--output")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "weights.safetensors").write_text("x")
    with pytest.raises(ValueError, match="overlaps the input"):  # holds a checkpoint file
        check_output_location("run", [tmp_path / "run" / "weights.safetensors"])
