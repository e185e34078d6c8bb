"""Files a build writes outside its project directory: staged beside their place, moved in
only when the build succeeded, the replaced ones set aside for the old project's removal."""
from __future__ import annotations

import os

import pytest

from mln_core.store import OutsideFiles, Store


@pytest.fixture
def dirs(tmp_path):
    staging = tmp_path / "projects" / ".p.build-4242"
    staging.mkdir(parents=True)
    shared = tmp_path / "shared"
    shared.mkdir()
    return staging, shared


def test_staged_file_moves_in_and_the_replaced_one_goes_aside(dirs):
    staging, shared = dirs
    (shared / "h.p").write_text("old disk")
    out = OutsideFiles(str(staging))
    staged = out.place(str(shared / "h.p"))
    assert os.path.dirname(staged) == str(shared / ".p.build-4242") and staged.endswith("/h.p")
    open(staged, "w").write("new disk")
    assert out.where(str(shared / "h.p")) == staged                 # during the build: the staged copy
    assert (shared / "h.p").read_text() == "old disk"               # the old project's file is untouched
    out.commit()
    assert (shared / "h.p").read_text() == "new disk"
    aside = out.where(str(shared / "h.p"))                          # the replaced project's removal ...
    assert open(aside).read() == "old disk"                         # ... finds its own file
    out.discard()
    assert sorted(os.listdir(shared)) == ["h.p"]


def test_a_failed_commit_puts_everything_back(dirs, monkeypatch):
    staging, shared = dirs
    for name in ("a.p", "b.p"):
        (shared / name).write_text(f"old {name}")
    out = OutsideFiles(str(staging))
    for name in ("a.p", "b.p"):
        open(out.place(str(shared / name)), "w").write(f"new {name}")
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 4:                 # a.p aside, a.p in, b.p aside, b.p in: fails
            raise OSError(5, "Input/output error")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        out.commit()
    monkeypatch.setattr(os, "replace", real)
    assert (shared / "a.p").read_text() == "old a.p" and (shared / "b.p").read_text() == "old b.p"
    assert open(out.where(str(shared / "a.p"))).read() == "new a.p"     # still staged: discard deletes it
    Store.discard_staging(str(staging))
    assert sorted(os.listdir(shared)) == ["a.p", "b.p"] and not staging.exists()


def test_a_folder_left_by_an_earlier_build_with_the_same_pid_is_still_cleaned_up(dirs):
    staging, shared = dirs
    stale = shared / ".p.build-4242"
    stale.mkdir()
    (stale / "h.p").write_text("from a killed build")
    out = OutsideFiles(str(staging))
    out.place(str(shared / "h.p"))
    out.discard()
    assert os.listdir(shared) == []


def test_discard_deletes_only_the_builds_own_folders(dirs, tmp_path):
    staging, shared = dirs
    (staging / "outside").write_text(f"{shared}\n{shared / '.p.build-4242'}\n")
    (shared / ".p.build-4242").mkdir()
    (shared / "keep").write_text("not ours")
    OutsideFiles.discard_recorded(str(staging))
    assert os.listdir(shared) == ["keep"]
