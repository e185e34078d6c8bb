"""The project lock once ``remove`` deleted its file, and who owns a disk outside the
projects directory (issue 11, items 5 and 6)."""
from __future__ import annotations

import fcntl
import os

import pytest

from mln_core import owners
from mln_core.errors import MlnError
from mln_core.journal import Journal
from mln_core.store import OutsideFiles, ProjectBusy, Store


def test_a_lock_file_removed_while_a_command_waited_for_it_is_not_trusted(tmp_path, monkeypatch):
    """B opened the lock file; A (remove) unlinks it and lets go; C makes a new one and takes
    it; B then gets the old, unlinked file: it must see that and find C's lock busy."""
    store = Store(str(tmp_path))
    a, c = store.lock("p").__enter__(), store.lock("p")
    real, calls = fcntl.flock, []

    def flock(fd, op):
        if not calls:
            calls.append(op)
            a.unlink()
            a.__exit__(None, None, None)
            c.__enter__()
        return real(fd, op)
    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(ProjectBusy, match="busy"):
        store.lock("p").__enter__()
    c.__exit__(None, None, None)
    with store.lock("p"):                   # free again
        pass


def test_leftovers_match_only_our_exact_names(tmp_path):
    store = Store(str(tmp_path))
    dead = 99999999
    for name in (f".p.build-{dead}", f".p.build-1.build-{dead}", f".pp.build-{dead}", f".p.build-{dead}x",
                 f".mln-tmp-{dead}", ".mln-tmp-x"):
        (tmp_path / name).mkdir()
    store.clean_stale_builds("p")
    assert sorted(os.listdir(tmp_path)) == [".mln-tmp-x", f".p.build-1.build-{dead}", f".p.build-{dead}x",
                                            f".pp.build-{dead}"]


def test_private_tmp_is_used_and_removed(tmp_path):
    import tempfile
    store = Store(str(tmp_path))
    before = tempfile.gettempdir()
    with store.private_tmp() as d:
        assert d == str(tmp_path / f".mln-tmp-{os.getpid()}") and tempfile.mkdtemp().startswith(d)
    assert tempfile.gettempdir() == before and not os.path.exists(d)


def test_a_disk_owned_by_another_project_or_host_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    p1, p2 = str(tmp_path / "one" / "p"), str(tmp_path / "two" / "p")
    disk = shared / "a.p"
    disk.write_text("disk of one")
    owners.claim(str(disk), p1, "a")
    assert owners.problem(str(disk), p1, "a") is None
    why = owners.problem(str(disk), p2, "a")
    assert p1 in why and p2 in why and "two projects cannot share a disk" in why
    assert "two hosts" in owners.problem(str(disk), p1, "b")
    stray = shared / "b.p"
    stray.write_text("x")
    assert "belongs to no project" in owners.problem(str(stray), p1, "b")
    assert owners.problem(str(stray), p1, "b", mine={str(stray)}) is None    # built before marks
    # a build refuses it when it places the file
    staging = tmp_path / "two" / ".p.build-4242"
    staging.mkdir(parents=True)
    out = OutsideFiles(str(staging), p2)
    out.current.host = "a"
    with pytest.raises(MlnError, match="already the disk of host a of project p"):
        out.place(str(disk))
    # two hosts of one build on one file
    out = OutsideFiles(str(staging), p1)
    out.current.host = "a"
    out.place(str(shared / "c.p"))
    out.current.host = "b"
    with pytest.raises(MlnError, match="also the disk of host a"):
        out.place(str(shared / "c.p"))
    # the mark goes with the file
    disk.unlink()
    owners.release(str(disk), p1)
    assert not os.path.exists(owners.mark_path(str(disk)))


def test_a_torn_journal_reads_as_given(tmp_path):
    path = tmp_path / "j"
    assert Journal.load(str(path)) is None
    path.write_text('{"phase": "comm')
    assert Journal.load(str(path), torn={"phase": "stop"}) == {"phase": "stop"}
    j = Journal(str(path))
    j.save(phase="x")
    j.add("moves", 1)
    assert Journal.load(str(path)) == {"phase": "x", "moves": [1]}
    j.remove()
    assert not path.exists()
