"""The TF Serving folder layout: integer versions, the next free one, no overwrite, atomic publish."""

from __future__ import annotations

import pytest

from tfpets.errors import ArgumentError
from tfpets.export import layout


def _make_versions(model_path, *names):
  for name in names:
    (model_path / name).mkdir(parents=True)
    (model_path / name / "saved_model.pb").write_bytes(b"x")


def test_versions_are_the_integer_folders_and_the_next_one_follows_the_highest(tmp_path):
  model_path = tmp_path / "pets"
  assert layout.versions(model_path) == [] and layout.next_version(model_path) == 1
  _make_versions(model_path, "1", "10", "3", "notes", ".staging-11-abc")
  (model_path / "7").write_text("a file, not a version")
  assert layout.versions(model_path) == [1, 3, 10]
  assert layout.next_version(model_path) == 11
  assert layout.resolve_version(model_path, None) == 11
  assert layout.resolve_version(model_path, 4) == 4


@pytest.mark.parametrize("version", [0, -2, True, 1.5])
def test_a_version_must_be_a_positive_integer(tmp_path, version):
  with pytest.raises(ArgumentError, match="positive integer") as info:
    layout.resolve_version(tmp_path, version)
  assert info.value.argument == "version"


def test_an_existing_version_is_refused(tmp_path):
  _make_versions(tmp_path, "2")
  with pytest.raises(ArgumentError, match="never overwrites") as info:
    layout.resolve_version(tmp_path, 2)
  assert info.value.argument == "version"


@pytest.mark.parametrize("name", ["", "a/b", "../up", ".hidden", "with space"])
def test_a_model_name_must_be_one_plain_folder_name(tmp_path, name):
  with pytest.raises(ArgumentError) as info:
    layout.model_dir(tmp_path, name)
  assert info.value.argument == "name"
  assert layout.model_dir(tmp_path, "pets-v2.1_x") == tmp_path / "pets-v2.1_x"


def test_a_staged_version_appears_whole_under_its_number(tmp_path):
  with layout.staged_version(tmp_path / "pets", 1) as staging:
    (staging / "saved_model.pb").write_bytes(b"model")
    assert not (tmp_path / "pets" / "1").exists()  # nothing under the version while writing
    assert staging.parent == tmp_path / "pets" and not staging.name.isdigit()
  assert (tmp_path / "pets" / "1" / "saved_model.pb").read_bytes() == b"model"
  assert [p.name for p in (tmp_path / "pets").iterdir()] == ["1"]


def test_a_failed_export_leaves_no_version_and_no_staging_folder(tmp_path):
  with pytest.raises(RuntimeError, match="conversion failed"):
    with layout.staged_version(tmp_path / "pets", 1) as staging:
      (staging / "saved_model.pb").write_bytes(b"half")
      raise RuntimeError("conversion failed")
  assert list((tmp_path / "pets").iterdir()) == []


def test_a_version_written_meanwhile_is_not_replaced(tmp_path):
  with pytest.raises(ArgumentError, match="appeared while exporting"):
    with layout.staged_version(tmp_path / "pets", 1) as staging:
      (staging / "saved_model.pb").write_bytes(b"mine")
      _make_versions(tmp_path / "pets", "1")
  assert (tmp_path / "pets" / "1" / "saved_model.pb").read_bytes() == b"x"
  assert [p.name for p in (tmp_path / "pets").iterdir()] == ["1"]


def test_version_dir_finds_the_highest_version_of_a_model_or_export_folder(tmp_path):
  _make_versions(tmp_path / "landmarks", "1", "2")
  assert layout.version_dir(tmp_path / "landmarks" / "1") == tmp_path / "landmarks" / "1"
  assert layout.version_dir(tmp_path / "landmarks") == tmp_path / "landmarks" / "2"
  assert layout.version_dir(tmp_path, "landmarks") == tmp_path / "landmarks" / "2"
  with pytest.raises(ArgumentError, match="no exported version") as info:
    layout.version_dir(tmp_path, "generator")
  assert info.value.argument == "directory"
