"""mln export / mln import from the user's side: a guest's files survive the round trip;
every bad archive is one message and nothing is placed."""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pytest

pytestmark = pytest.mark.guests

MARKED = """
global { project keep }
host m {
    hypervisor uml
    template busybox.ext4
    memory 64M
    startup {
        if [ -f /root/marker ]; then echo "MLN-MARK found $(cat /root/marker)"
        else echo kept-across-export > /root/marker; sync; echo "MLN-MARK written"; fi
    }
}
"""

PLAIN = "global { project small }\nhost a {\n    hypervisor uml\n    template busybox.ext4\n}\n"


def test_a_guest_keeps_its_files_through_export_and_import(mln_env):
    path = mln_env.write("keep.mln", MARKED)
    assert mln_env.mln("build", "-q", "-f", str(path)).returncode == 0
    r = mln_env.mln("start", "-q", "-p", "keep")
    assert r.returncode == 0 and "+--->" not in r.stderr, r.output
    mln_env.wait_console("keep", "m", r"MLN-MARK written")
    archive = mln_env.root / "keep.tar.zst"

    r = mln_env.mln("export", "-p", "keep", "-o", str(archive))       # running: refused
    assert r.returncode == 1 and "is running (m)" in r.stderr and "-s" in r.stderr, r.output
    assert not archive.exists()
    r = mln_env.mln("export", "-p", "keep", "-o", str(archive), "-s")  # -s stops it first
    assert r.returncode == 0, r.output
    assert "m: stopped" in r.stderr and "exported to" in r.stderr
    with tarfile.open(fileobj=io.BytesIO(_zstd_d(archive)), mode="r:") as tf:
        names = tf.getnames()
        manifest = json.load(tf.extractfile("manifest.json"))
    assert names[0] == "manifest.json"
    assert set(names[1:]) == set(manifest["members"]) == {"project/keep.mln", "project/version",
                                                          "project/state.json", "disks/m/disk.qcow2"}
    assert manifest["project"] == "keep" and manifest["version"] == 1
    assert all(not n.startswith("/") and ".." not in n for n in names)

    assert mln_env.mln("remove", "-f", "-p", "keep").returncode == 0
    r = mln_env.mln("import", "-i", str(archive))
    assert r.returncode == 0, r.output
    disk = mln_env.projects / "keep" / "images" / "m"
    assert disk.stat().st_blocks * 512 < disk.stat().st_size / 4          # still sparse
    assert mln_env.mln("start", "-p", "keep").returncode == 0
    out = mln_env.wait_console("keep", "m", r"MLN-MARK found")
    assert "MLN-MARK found kept-across-export" in out
    assert mln_env.mln("stop", "-q", "-p", "keep", "-H").returncode == 0


def _zstd_d(path) -> bytes:
    import subprocess
    return subprocess.run(["zstd", "-d", "-c", str(path)], capture_output=True, check=True).stdout


def _rewrite(src, dst, change=None, extra=()):
    """Copy the gzip archive ``src`` to ``dst`` (plain tar): ``change(name, data)`` may
    replace a member's bytes; ``extra`` members (name, data) are added at the end."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if change:
                data = change(m.name, data)
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_bad_archives_are_refused_and_nothing_is_placed(mln_env, tmp_path):
    path = mln_env.write("small.mln", PLAIN)
    assert mln_env.mln("build", "-q", "-f", str(path)).returncode == 0
    good = tmp_path / "small.tar.gz"
    r = mln_env.mln("export", "-p", "small", "-o", str(good))
    assert r.returncode == 0, r.output
    r = mln_env.mln("export", "-p", "small", "-o", str(good))
    assert r.returncode == 1 and "exists; use -f" in r.stderr
    r = mln_env.mln("export", "-p", "small", "-o", str(tmp_path / "small.zip"))
    assert r.returncode == 1 and "must end in .tar" in r.stderr
    r = mln_env.mln("export", "-p", "nope", "-o", str(tmp_path / "x.tar"))
    assert r.returncode == 1 and "no project 'nope'" in r.stderr
    before = sorted(os.listdir(mln_env.projects))

    def refused(archive, *args, says):
        r = mln_env.mln("import", "-i", str(archive), *args)
        assert r.returncode == 1, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mln: error: ") and says in lines[0], r.stderr
        assert sorted(os.listdir(mln_env.projects)) == before        # no project, staging or lock left
        return lines[0]

    refused(tmp_path / "missing.tar", says="no such archive")
    refused(good, says="project 'small' exists")                      # the clash is named
    refused(good, "-p", "../evil", says="bad project name")

    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(5000))
    refused(junk, says="not an mln export archive")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    refused(cut, "-p", "cut", says="damaged")

    flipped = tmp_path / "flipped.tar"
    _rewrite(good, flipped, lambda n, d: d[:-100] + bytes(b ^ 0xFF for b in d[-100:])
             if n.startswith("disks/") else d)
    refused(flipped, "-p", "flipped", says="does not match its SHA-256")

    victim = tmp_path / "evil"
    for name in ("../../evil", str(victim), "project/../../evil"):
        bad = tmp_path / "traversal.tar"
        _rewrite(good, bad, extra=[(name, b"owned\n")])
        refused(bad, "-p", "trav", says="unsafe member")
        assert not victim.exists() and not (mln_env.root / "evil").exists()
    bad = tmp_path / "link.tar"
    with tarfile.open(good) as tin, tarfile.open(bad, "w") as tout:
        for m in tin.getmembers():
            if m.name == "project/version":
                m.type, m.linkname, m.size = tarfile.SYMTYPE, "/etc/passwd", 0
                tout.addfile(m)
            else:
                tout.addfile(m, tin.extractfile(m))
    refused(bad, "-p", "link", says="not a regular file")

    # the good archive under another name: a project of its own, which builds nothing new
    r = mln_env.mln("import", "-i", str(good), "-p", "copy")
    assert r.returncode == 0, r.output
    assert "project copy" in (mln_env.projects / "copy" / "copy.mln").read_text()
    r = mln_env.mln("list", "--format", "json")
    assert [p["project"] for p in json.loads(r.stdout)] == ["copy", "small"]
    assert gzip.decompress(good.read_bytes())[:512].startswith(b"manifest.json")
