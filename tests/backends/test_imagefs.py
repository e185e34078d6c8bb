"""Tests for mln_backends.imagefs: ext4 images edited with debugfs, qcow2 overlays, raw views.

Images are built with ``mkfs.ext4 -d`` (no mount). Everything is checked independently
with debugfs (``stat``, ``dump``, ``rdump``) and e2fsck, never with a mount.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time

import pytest

from mln_core.guest import detect_family
from mln_backends.imagefs import (
    Ext4Image,
    ImageError,
    create_overlay,
    grow_image,
    grow_qcow2,
    image_size,
    open_image,
    raw_view,
)

MiB = 1024 * 1024


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(autouse=True)
def _e2fsprogs():
    need("debugfs", "mkfs.ext4", "e2fsck")


@pytest.fixture
def work(tmp_path):
    """tmp_path, removed completely afterwards (also when the test fails)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


# ---- helpers ---------------------------------------------------------------------------

def mkimage(path, tree: dict, size="16M"):
    """Build an ext4 image from {relpath: bytes | ("link", target) | ("dir",)}."""
    src = str(path) + ".src"
    os.makedirs(src)
    for rel, val in tree.items():
        p = os.path.join(src, rel)
        if isinstance(val, tuple) and val[0] == "dir":
            os.makedirs(p, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if isinstance(val, tuple) and val[0] == "link":
            os.symlink(val[1], p)
        else:
            with open(p, "wb") as f:
                f.write(val)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", src, str(path), size], check=True, capture_output=True)
    shutil.rmtree(src)
    return str(path)


BASE = {
    "etc/hostname": b"template\n",
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
    "etc/shadow": b"root:*:19000:0:99999:7:::\n",
    "etc/group": b"root:x:0:\n",
    "usr/lib/systemd/system/ssh.service": b"[Unit]\nDescription=ssh\n",
    "usr/bin/true": b"\x7fELF fake",
    "lib": ("link", "usr/lib"),
    "bin": ("link", "usr/bin"),
    "var/empty": ("dir",),
}


@pytest.fixture
def img(work):
    return mkimage(work / "root.ext4", BASE)


def dbg(image, cmd: str) -> bytes:
    r = subprocess.run(["debugfs", "-R", cmd, str(image)], capture_output=True, check=True)
    return r.stdout


def q(path: str) -> str:
    return '"' + path.replace('"', '""') + '"'


def dstat(image, path):
    """Type, permission bits, uid, gid of ``path`` according to debugfs (None if absent)."""
    out = dbg(image, f"stat {q(path)}").decode("utf-8", "replace")
    m = re.search(r"Type: (\S+)\s+Mode:\s+(\d+)", out)
    if not m:
        return None
    u = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    return m[1], int(m[2], 8), int(u[1]), int(u[2])


def dcat(image, path, tmpdir):
    out = os.path.join(str(tmpdir), "dcat.out")
    if os.path.exists(out):
        os.unlink(out)
    dbg(image, f"dump {q(path)} {q(out)}")
    if not os.path.exists(out):
        return None
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


def fsck_clean(image):
    r = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    return r.returncode == 0, r.stdout + r.stderr


def snapshot(image, tmpdir):
    """{path: (kind, mode, uid, gid, content)} of the whole image, via debugfs rdump."""
    d = os.path.join(str(tmpdir), "rdump")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    dbg(image, f"rdump / {q(d)}")
    snap = {}
    for top, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(top, name)
            st = os.lstat(p)
            rel = "/" + os.path.relpath(p, d)
            if os.path.islink(p):
                snap[rel] = ("l", st.st_mode, st.st_uid, st.st_gid, os.readlink(p))
            elif os.path.isdir(p):
                snap[rel] = ("d", st.st_mode, st.st_uid, st.st_gid, None)
            else:
                with open(p, "rb") as f:
                    snap[rel] = ("f", st.st_mode, st.st_uid, st.st_gid, f.read())
    shutil.rmtree(d)
    return snap


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fuse_mounts():
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if "mln-rawview-" in line.split()[1]]


def our_qsd_processes(marker="mln-rawview-"):
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                st = f.read()
        except OSError:
            continue
        state = st[st.rfind(b")") + 2:st.rfind(b")") + 3]
        if b"qemu-storage-daemon" in cmd and marker.encode() in cmd and state not in (b"Z", b"X"):
            pids.append(int(pid))
    return pids


BINARY = bytes(range(256)) * 64 + b"\0" * 16384 + os.urandom(50000) + b"\r\n\0tail"


# ---- Ext4Image: reading and writing ------------------------------------------------------

def test_read_existing_and_missing(img):
    with Ext4Image(img) as fs:
        assert fs.read("/etc/hostname") == b"template\n"
        assert fs.read_text("/etc/passwd").startswith("root:x:0:0")
        assert fs.read("/etc/nonexistent") is None
        assert fs.read("/nodir/x") is None
        assert fs.read("/etc") is None  # a directory is not a regular file
        assert fs.read("/etc/hostname/x") is None
        # through the merged-/usr symlink /lib -> usr/lib
        assert fs.read("/lib/systemd/system/ssh.service") == b"[Unit]\nDescription=ssh\n"


def test_write_read_roundtrip(img, work):
    files = {
        "/etc/hostname": (b"vm1\n", 0o644, 0, 0),
        "/etc/binary.bin": (BINARY, 0o600, 0, 0),
        "/etc/empty": (b"", 0o640, 0, 42),
        "/etc/with space/and more spaces.txt": (b"spaces\n", 0o644, 1000, 1000),
        "/new/nested/deep/dir/file": (b"nested\n", 0o755, 0, 0),
        "/home/alice/.ssh/authorized_keys": (b"ssh-ed25519 AAAA alice\n", 0o600, 100000, 70000),
    }
    fs = Ext4Image(img)
    for path, (data, mode, uid, gid) in files.items():
        fs.write(path, data, mode, uid, gid)
    # visible before the flush
    for path, (data, *_rest) in files.items():
        assert fs.read(path) == data
    assert fs.pending == len(files)
    fs.close()

    ok, log = fsck_clean(img)
    assert ok, log
    for path, (data, mode, uid, gid) in files.items():
        assert dcat(img, path, work) == data, path
        assert dstat(img, path) == ("regular", mode, uid, gid), path
    # missing parents: 0755 root
    for d in ("/new", "/new/nested", "/new/nested/deep", "/new/nested/deep/dir", "/home", "/home/alice",
              "/home/alice/.ssh", "/etc/with space"):
        assert dstat(img, d) == ("directory", 0o755, 0, 0), d
    # an existing parent keeps its mode
    assert dstat(img, "/etc") == ("directory", 0o755, 0, 0)

    with Ext4Image(img) as fs:  # and through a fresh handle
        for path, (data, *_rest) in files.items():
            assert fs.read(path) == data


def test_odd_names(img, work):
    names = ['/etc/quote "q" here', "/etc/back\\slash", "/etc/$HOME and `x`", "/etc/ünïcødé ✓",
             "/etc/semi;colon", "/etc/  leading and trailing  ", "/etc/#hash", "/etc/-dash"]
    with Ext4Image(img) as fs:
        for i, n in enumerate(names):
            fs.write(n, f"{i}\n".encode())
    ok, log = fsck_clean(img)
    assert ok, log
    with Ext4Image(img) as fs:
        listing = fs.listdir("/etc")
        for i, n in enumerate(names):
            assert fs.read(n) == f"{i}\n".encode(), n
            assert os.path.basename(n) in listing
    for i, n in enumerate(names):
        assert dcat(img, n, work) == f"{i}\n".encode(), n
    with pytest.raises(ImageError):
        Ext4Image(img).write("/etc/new\nline", b"x")
    with pytest.raises(ImageError):
        Ext4Image(img).write("relative/path", b"x")


def test_overwrite(img, work):
    with Ext4Image(img) as fs:
        fs.write("/etc/hostname", b"first\n", 0o600, 5, 5)
        fs.write("/etc/hostname", b"second, longer than the first\n", 0o644, 0, 0)
        assert fs.read("/etc/hostname") == b"second, longer than the first\n"
    with Ext4Image(img) as fs:
        fs.write("/etc/hostname", b"third\n", 0o640, 7, 8)  # replace a file from the image
        fs.write("/lib", b"not a link any more\n")  # replaces the symlink, does not follow it
    assert dcat(img, "/etc/hostname", work) == b"third\n"
    assert dstat(img, "/etc/hostname") == ("regular", 0o640, 7, 8)
    assert dstat(img, "/lib")[0] == "regular"
    assert dcat(img, "/usr/lib/systemd/system/ssh.service", work) is not None
    ok, log = fsck_clean(img)
    assert ok, log


def test_symlinks(img, work):
    long_target = "/usr/lib/" + "x" * 100 + "/target"  # a "slow" symlink (> 60 bytes)
    with Ext4Image(img) as fs:
        fs.symlink("/usr/lib/systemd/system/ssh.service",
                   "/etc/systemd/system/multi-user.target.wants/ssh.service")
        fs.symlink("../usr/bin/true", "/etc/rel")
        fs.symlink("hostname", "/etc/hn")
        fs.symlink(long_target, "/etc/long")
        fs.symlink("dangling-target", "/etc/dangling")
        fs.symlink("first", "/etc/replaced")
        fs.symlink("second", "/etc/replaced")
        fs.symlink("instead of a file", "/etc/group")
        assert fs.read("/etc/systemd/system/multi-user.target.wants/ssh.service") == b"[Unit]\nDescription=ssh\n"
        assert fs.read("/etc/rel") == b"\x7fELF fake"
        assert fs.read("/etc/hn") == b"template\n"
        assert fs.exists("/etc/dangling") and not fs.is_dir("/etc/dangling")
        assert fs.read("/etc/dangling") is None
        assert fs.is_dir("/lib") and fs.listdir("/lib") == ["systemd"]
        with pytest.raises(ImageError):
            fs.symlink("x", "/etc")  # a directory is not replaced
    ok, log = fsck_clean(img)
    assert ok, log
    out = dbg(img, 'stat "/etc/systemd/system/multi-user.target.wants/ssh.service"').decode()
    assert 'Fast link dest: "/usr/lib/systemd/system/ssh.service"' in out
    assert 'Fast link dest: "second"' in dbg(img, 'stat "/etc/replaced"').decode()
    assert dstat(img, "/etc/group")[0] == "symlink"
    assert dstat(img, "/etc/systemd/system") == ("directory", 0o755, 0, 0)
    # a fresh handle resolves the links from the image (fast, slow, relative, with ..)
    with Ext4Image(img) as fs:
        fs.write(long_target, b"behind a slow link\n")
        assert fs.read("/etc/long") == b"behind a slow link\n"
        assert fs.read("/etc/rel") == b"\x7fELF fake"
        assert fs.read("/etc/replaced") is None
    with Ext4Image(img) as fs:
        assert fs.read("/etc/long") == b"behind a slow link\n"
        assert fs.read("/etc/systemd/system/multi-user.target.wants/ssh.service") == b"[Unit]\nDescription=ssh\n"


def test_write_through_directory_symlink(img, work):
    """Merged /usr: /lib -> usr/lib; debugfs alone would not follow the link."""
    with Ext4Image(img) as fs:
        fs.write("/lib/systemd/system/mln.service", b"[Unit]\n", 0o644)
        fs.mkdir("/lib/mln/sub", 0o750)
        fs.write("/bin/mln-helper", b"#!/bin/sh\n", 0o755)
        assert fs.listdir("/usr/lib/systemd/system") == ["mln.service", "ssh.service"]
    assert dcat(img, "/usr/lib/systemd/system/mln.service", work) == b"[Unit]\n"
    assert dstat(img, "/usr/lib/mln/sub") == ("directory", 0o750, 0, 0)
    assert dstat(img, "/usr/bin/mln-helper") == ("regular", 0o755, 0, 0)
    assert dstat(img, "/lib")[0] == "symlink"
    ok, log = fsck_clean(img)
    assert ok, log


def test_mkdir(img):
    with Ext4Image(img) as fs:
        fs.mkdir("/root/.ssh", 0o700)
        fs.mkdir("/root/.ssh", 0o700)  # idempotent
        fs.mkdir("/srv/a/b/c", 0o711, 1000, 1001)
        fs.mkdir("/etc", 0o750, 3, 4)  # existing: mode and owner are set
        fs.mkdir("/var/empty")
        assert fs.is_dir("/srv/a/b/c")
        with pytest.raises(ImageError, match="/etc/hostname"):
            fs.mkdir("/etc/hostname")
    assert dstat(img, "/root/.ssh") == ("directory", 0o700, 0, 0)
    assert dstat(img, "/root") == ("directory", 0o755, 0, 0)
    assert dstat(img, "/srv/a/b") == ("directory", 0o755, 0, 0)
    assert dstat(img, "/srv/a/b/c") == ("directory", 0o711, 1000, 1001)
    assert dstat(img, "/etc") == ("directory", 0o750, 3, 4)
    assert dstat(img, "/etc/hostname")[0] == "regular"
    ok, log = fsck_clean(img)
    assert ok, log


def test_remove(img):
    with Ext4Image(img) as fs:
        fs.write("/etc/tmpfile", b"x")
        fs.remove("/etc/tmpfile")  # pending write, then removed
        fs.remove("/etc/hostname")
        fs.remove("/lib")  # a symlink, not its target
        fs.remove("/etc/nonexistent")  # no-op
        fs.remove("/nodir/nonexistent")  # no-op
        fs.remove("/var/empty")  # an empty directory
        with pytest.raises(ImageError, match="not empty"):
            fs.remove("/usr")
        assert not fs.exists("/etc/hostname") and fs.read("/etc/hostname") is None
        assert not fs.exists("/etc/tmpfile")
    assert dstat(img, "/etc/hostname") is None
    assert dstat(img, "/etc/tmpfile") is None
    assert dstat(img, "/lib") is None
    assert dstat(img, "/var/empty") is None
    assert dstat(img, "/usr/lib/systemd/system/ssh.service")[0] == "regular"
    ok, log = fsck_clean(img)
    assert ok, log


def test_chmod_chown(img):
    with Ext4Image(img) as fs:
        fs.chmod("/etc/shadow", 0o640)
        fs.chown("/etc/shadow", 0, 42)
        fs.write("/etc/new", b"n", 0o644)
        fs.chmod("/etc/new", 0o4755)
        fs.chown("/etc/new", 12, 34)
        fs.chmod("/usr/bin", 0o700)
        fs.chmod("/bin", 0o755)  # follows the symlink
        with pytest.raises(ImageError, match="no such file"):
            fs.chmod("/etc/missing", 0o600)
    assert dstat(img, "/etc/shadow") == ("regular", 0o640, 0, 42)
    assert dstat(img, "/etc/new") == ("regular", 0o4755, 12, 34)
    assert dstat(img, "/usr/bin") == ("directory", 0o755, 0, 0)
    assert dstat(img, "/bin")[0] == "symlink"
    ok, log = fsck_clean(img)
    assert ok, log


def test_queries_see_pending_changes(img):
    with Ext4Image(img) as fs:
        assert fs.listdir("/") == ["bin", "etc", "lib", "lost+found", "usr", "var"]
        assert fs.listdir("/missing") == []
        assert fs.exists("/lib") and fs.is_dir("/lib") and not fs.is_dir("/etc/passwd")
        assert fs.exists("/etc/passwd") and not fs.exists("/etc/passwd/x")
        fs.write("/etc/a/b", b"1")
        fs.symlink("/etc/a", "/etc/link")
        fs.remove("/etc/group")
        assert fs.exists("/etc/a/b") and fs.is_dir("/etc/a") and fs.is_dir("/etc/link")
        assert fs.read("/etc/link/b") == b"1"
        assert "group" not in fs.listdir("/etc") and "a" in fs.listdir("/etc")
        runs = fs.stats["debugfs_runs"]
        for _ in range(3):  # answered from the model: no further debugfs runs
            fs.exists("/etc/passwd")
            fs.listdir("/etc")
            fs.read("/etc/a/b")
        assert fs.stats["debugfs_runs"] == runs
        fs.flush()
        assert fs.pending == 0
        assert fs.read("/etc/link/b") == b"1"
    with Ext4Image(img) as fs:
        assert fs.listdir("/etc/a") == ["b"]
        assert not fs.exists("/etc/group")


def apply_individualization(fs, n=1):
    """A typical individualization: 3 reads, 10 files, 3 directories, 2 symlinks."""
    passwd = fs.read_text("/etc/passwd")
    shadow = fs.read_text("/etc/shadow")
    group = fs.read_text("/etc/group")
    assert passwd and shadow and group
    fs.mkdir("/root/.ssh", 0o700)
    fs.mkdir(f"/home/user{n}", 0o750, 1000, 1000)
    fs.mkdir("/etc/mln", 0o755)
    fs.write_text("/etc/hostname", f"vm{n}\n")
    fs.write_text("/etc/hosts", f"127.0.0.1 localhost\n10.0.0.{n} vm{n}\n")
    fs.write_text("/etc/network/interfaces", f"auto eth0\niface eth0 inet static\n  address 10.0.0.{n}/24\n")
    fs.write_text("/etc/resolv.conf", "nameserver 10.0.0.254\n")
    fs.write_text("/etc/passwd", passwd + f"user{n}:x:1000:1000::/home/user{n}:/bin/sh\n")
    fs.write_text("/etc/group", group + f"user{n}:x:1000:\n")
    fs.write_text("/etc/shadow", shadow + f"user{n}:$6$salt$hash:19000:0:99999:7:::\n", mode=0o640, gid=42)
    fs.write_text("/root/.ssh/authorized_keys", "ssh-ed25519 AAAAC3Nza key\n", mode=0o600)
    fs.write_text("/etc/mln/project", "project=test\n")
    fs.write("/etc/mln/blob", BINARY)
    fs.symlink("/usr/lib/systemd/system/ssh.service", "/etc/systemd/system/multi-user.target.wants/ssh.service")
    fs.symlink("/etc/mln/project", "/etc/mln/current")


def test_idempotent(img, work):
    with Ext4Image(img) as fs:
        apply_individualization(fs)
    first = snapshot(img, work)
    with Ext4Image(img) as fs:
        # the reads see the changes of the first run, so feed them the same input again
        fs.write_text("/etc/passwd", BASE["etc/passwd"].decode())
        fs.write_text("/etc/group", BASE["etc/group"].decode())
        fs.write_text("/etc/shadow", BASE["etc/shadow"].decode())
        apply_individualization(fs)
    second = snapshot(img, work)
    assert first == second
    assert first["/etc/hostname"][4] == b"vm1\n"
    assert first["/etc/shadow"][1:4] == (0o100640, 0, 42)
    assert first["/etc/systemd/system/multi-user.target.wants/ssh.service"][4] == \
        "/usr/lib/systemd/system/ssh.service"
    ok, log = fsck_clean(img)
    assert ok, log


def test_e2fsck_clean_after_many_operations(work):
    image = mkimage(work / "many.ext4", BASE, size="32M")
    with Ext4Image(image) as fs:
        for i in range(300):
            fs.write(f"/data/d{i % 7}/f{i}", os.urandom(i * 37), 0o600 + (i % 64), i, i * 2)
        for i in range(0, 300, 3):
            fs.remove(f"/data/d{i % 7}/f{i}")
        for i in range(50):
            fs.symlink(f"/data/d{i % 7}/f{i}", f"/links/l{i}")
        for i in range(0, 300, 5):
            fs.write(f"/data/d{i % 7}/f{i}", b"rewritten %d" % i)
    ok, log = fsck_clean(image)
    assert ok, log
    with Ext4Image(image) as fs:
        assert fs.read("/data/d0/f0") == b"rewritten 0"
        assert fs.read("/data/d1/f1") is not None
        assert fs.read("/data/d1/f1") == fs.read("/links/l1")
        assert fs.read("/data/d3/f3") is None
        assert len(fs.listdir("/links")) == 50


# ---- errors ------------------------------------------------------------------------------

def test_error_missing_image(work):
    with pytest.raises(ImageError, match="not found"):
        Ext4Image(work / "nope.ext4")


def test_error_not_ext4(work):
    junk = work / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    with pytest.raises(ImageError, match="not an ext2/ext3/ext4"):
        Ext4Image(junk)
    small = work / "small.img"
    small.write_bytes(b"tiny")
    with pytest.raises(ImageError, match="not an ext2/ext3/ext4"):
        Ext4Image(small)
    with pytest.raises(ImageError, match="directory"):
        Ext4Image(work)


def test_error_qcow2_given_to_ext4image(img, work):
    need("qemu-img")
    ov = work / "ov.qcow2"
    create_overlay(img, ov)
    with pytest.raises(ImageError, match="qcow2"):
        Ext4Image(ov)


def test_error_write_below_regular_file(img):
    fs = Ext4Image(img)
    with pytest.raises(ImageError) as ei:
        fs.write("/etc/hostname/sub", b"x")
    msg = str(ei.value)
    assert img in msg and "/etc/hostname/sub" in msg and "not a directory" in msg
    with pytest.raises(ImageError, match="is a directory"):
        fs.write("/etc", b"x")
    fs.close()
    ok, log = fsck_clean(img)
    assert ok, log


def test_error_reported_by_debugfs(work):
    """debugfs exits 0 on errors; the message on stderr must become an ImageError."""
    image = mkimage(work / "tiny.ext4", BASE, size="8M")
    fs = Ext4Image(image)
    fs.write("/etc/ok", b"fine")
    fs.write("/srv/too big for the filesystem", os.urandom(12 * MiB))
    fs.write("/etc/after", b"x")
    with pytest.raises(ImageError) as ei:
        fs.close()
    msg = str(ei.value)
    assert image in msg
    assert "/srv/too big for the filesystem" in msg
    assert "allocate" in msg  # "Could not allocate block in ext2 filesystem"
    assert "/etc/ok:" not in msg
    with pytest.raises(ImageError, match="closed"):
        fs.read("/etc/ok")


def test_error_debugfs_cannot_open(work, img):
    fs = Ext4Image(img)
    fs.write("/etc/x", b"x")
    with open(img, "r+b") as f:  # destroy the superblock behind the handle's back
        f.seek(1024)
        f.write(b"\0" * 1024)
    with pytest.raises(ImageError, match="cannot open"):
        fs.close()


def test_journal_recovery_flag(img):
    """A filesystem that needs journal recovery is recovered before it is edited."""
    subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", img], check=True, capture_output=True)
    with Ext4Image(img) as fs:
        fs.write("/etc/hostname", b"recovered\n")
    out = subprocess.run(["dumpe2fs", "-h", img], capture_output=True, text=True).stdout
    assert "needs_recovery" not in out
    ok, log = fsck_clean(img)
    assert ok, log


# ---- sizes ---------------------------------------------------------------------------------

def block_count(image):
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout
    blocks = int(re.search(r"^Block count:\s+(\d+)", out, re.M)[1])
    bsize = int(re.search(r"^Block size:\s+(\d+)", out, re.M)[1])
    return blocks, bsize


def test_grow_image(img, work):
    need("resize2fs", "dumpe2fs")
    blocks, bsize = block_count(img)
    assert blocks * bsize == 16 * MiB == image_size(img)
    grow_image(img, 64 * MiB)
    assert os.path.getsize(img) == 64 * MiB == image_size(img)
    assert os.stat(img).st_blocks * 512 < 64 * MiB  # sparse
    blocks, bsize = block_count(img)
    assert blocks * bsize == 64 * MiB
    ok, log = fsck_clean(img)
    assert ok, log
    with Ext4Image(img) as fs:
        assert fs.read("/etc/hostname") == b"template\n"
        fs.write("/big", os.urandom(30 * MiB))  # needs the new space
    ok, log = fsck_clean(img)
    assert ok, log
    grow_image(img, 64 * MiB)  # same size: nothing to do
    with pytest.raises(ImageError, match="larger"):
        grow_image(img, 32 * MiB)
    assert os.path.getsize(img) == 64 * MiB


# ---- qcow2 overlays and the FUSE raw view ---------------------------------------------------

@pytest.fixture
def qemu_tools():
    need("qemu-img", "qemu-storage-daemon")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    before_mounts, before_pids = set(fuse_mounts()), set(our_qsd_processes())
    yield
    # nothing may be left behind by a test, whatever happened
    assert set(fuse_mounts()) <= before_mounts
    assert set(our_qsd_processes()) <= before_pids


def test_create_overlay_and_edit_through_raw_view(img, work, qemu_tools):
    tsum = sha256(img)
    ov = str(work / "vm1.qcow2")
    create_overlay(img, ov)
    info = subprocess.run(["qemu-img", "info", "--output=json", ov], capture_output=True, text=True).stdout
    assert '"backing-filename-format": "raw"' in info and os.path.abspath(img) in info
    assert image_size(ov) == 16 * MiB

    with raw_view(ov) as raw:
        assert os.path.getsize(raw) == 16 * MiB
        with Ext4Image(raw) as fs:
            assert fs.read("/etc/hostname") == b"template\n"
            fs.write("/etc/hostname", b"vm1\n", 0o644)
            fs.mkdir("/root/.ssh", 0o700)
        ok, log = fsck_clean(raw)
        assert ok, log
    assert not os.path.exists(os.path.dirname(raw))

    helpers = []
    with open_image(ov, on_helper=lambda pidfile, mnt: helpers.append((pidfile, mnt))) as fs:  # reopen
        assert fs.read("/etc/hostname") == b"vm1\n"  # the change is in the overlay
        assert len(helpers) == 1 and helpers[0][1] == fs.path and helpers[0][1] in fuse_mounts()
        with open(helpers[0][0]) as f:   # the recorded pidfile names the running daemon
            assert our_qsd_processes(os.path.dirname(fs.path)) == [int(f.read())]
        assert fs.is_dir("/root/.ssh")
        fs.write("/etc/motd", b"hello\n")
    with open_image(ov) as fs:
        assert fs.read("/etc/motd") == b"hello\n"
    assert sha256(img) == tsum  # the template is untouched
    with open_image(img) as fs:  # a raw image opens directly
        assert fs.read("/etc/hostname") == b"template\n"
    r = subprocess.run(["qemu-img", "check", ov], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_overlay_on_qcow2_template_with_size(img, work, qemu_tools):
    tq = str(work / "template.qcow2")
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", img, tq], check=True)
    ov = str(work / "vm2.qcow2")
    create_overlay(tq, ov, size_bytes=32 * MiB)
    assert image_size(ov) == 32 * MiB
    assert '"backing-filename-format": "qcow2"' in subprocess.run(
        ["qemu-img", "info", "--output=json", ov], capture_output=True, text=True).stdout
    with pytest.raises(ImageError, match="smaller"):
        create_overlay(tq, str(work / "small.qcow2"), size_bytes=8 * MiB)
    with pytest.raises(ImageError, match="not found"):
        create_overlay(work / "missing.qcow2", str(work / "x.qcow2"))


def test_grow_qcow2(img, work, qemu_tools):
    need("resize2fs", "dumpe2fs")
    tsum = sha256(img)
    ov = str(work / "vm3.qcow2")
    create_overlay(img, ov)
    grow_qcow2(ov, 48 * MiB)
    assert image_size(ov) == 48 * MiB
    with raw_view(ov) as raw:
        blocks, bsize = block_count(raw)
        assert blocks * bsize == 48 * MiB
        ok, log = fsck_clean(raw)
        assert ok, log
    with open_image(ov) as fs:
        assert fs.read("/etc/hostname") == b"template\n"
    with pytest.raises(ImageError, match="larger"):
        grow_qcow2(ov, 16 * MiB)
    assert sha256(img) == tsum


def test_raw_view_cleans_up_on_exception(img, work, qemu_tools):
    ov = str(work / "vm4.qcow2")
    create_overlay(img, ov)
    seen = {}
    with pytest.raises(RuntimeError, match="boom"):
        with raw_view(ov) as raw:
            seen["raw"] = raw
            seen["mounted"] = raw in fuse_mounts()
            seen["pids"] = our_qsd_processes(os.path.dirname(raw))
            raise RuntimeError("boom")
    assert seen["mounted"] and len(seen["pids"]) == 1
    assert seen["raw"] not in fuse_mounts()
    assert our_qsd_processes(os.path.dirname(seen["raw"])) == []
    assert not os.path.exists(os.path.dirname(seen["raw"]))


def test_open_image_closes_view_on_error(work, qemu_tools):
    """A qcow2 image that holds no ext4 filesystem: open_image fails and stops its export."""
    blank = str(work / "blank.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", blank, "16M"], check=True)
    with pytest.raises(ImageError, match="not an ext2/ext3/ext4"):
        open_image(blank)
    # (the qemu_tools fixture checks that no export and no daemon is left behind)


def test_raw_view_errors(work, qemu_tools):
    with pytest.raises(ImageError, match="not found"):
        with raw_view(work / "missing.qcow2"):
            pass
    bad = work / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\0" * 1000)  # qcow2 magic, broken header
    with pytest.raises(ImageError, match="qemu-storage-daemon"):
        with raw_view(bad):
            pass


# ---- family ------------------------------------------------------------------------------

@pytest.mark.parametrize("tree, family", [
    ({"bin/busybox": b"bb"}, "busybox"),
    ({"etc/network/interfaces": b""}, "debian"),
    ({"bin/busybox": b"bb", "etc/network/interfaces": b""}, "debian"),  # later markers win
    ({"etc/sysconfig/network-scripts": ("dir",)}, "redhat"),
    ({"boot.ini": b"[boot loader]"}, "windows"),
    ({"etc/suseRegister.conf": b"", "etc/network/interfaces": b""}, "suse"),
    ({"etc/hostname": b"x"}, None),
    ({"usr/bin/busybox": b"bb", "bin": ("link", "usr/bin")}, "busybox"),  # merged /usr
])
def test_detect_family(work, tree, family):
    image = mkimage(work / "fam.ext4", tree)
    with Ext4Image(image) as fs:
        assert detect_family(fs) == family


# ---- performance -------------------------------------------------------------------------

def realistic_tree():
    tree = dict(BASE)
    for i in range(300):
        tree[f"etc/conf{i}.d/file{i}"] = b"x = %d\n" % i
    for i in range(1500):
        tree[f"usr/bin/tool{i}"] = b"#!/bin/sh\n"
    for i in range(500):
        tree[f"usr/lib/systemd/system/unit{i}.service"] = b"[Unit]\n"
    tree["etc/network/interfaces"] = b"auto lo\niface lo inet loopback\n"
    return tree


def test_timing_typical_individualization(work, capsys):
    image = mkimage(work / "timing.ext4", realistic_tree(), size="256M")
    t0 = time.perf_counter()
    with Ext4Image(image) as fs:
        apply_individualization(fs, 7)
        family = detect_family(fs)
        runs = fs.stats["debugfs_runs"]
    dt = time.perf_counter() - t0
    assert family == "debian"
    ok, log = fsck_clean(image)
    assert ok, log
    with Ext4Image(image) as fs:
        assert fs.read("/etc/hostname") == b"vm7\n"
    with capsys.disabled():
        print(f"\n[imagefs timing] individualization (3 reads, 10 files, 3 dirs, 2 symlinks, "
              f"family detection) on a 256M raw image: {dt * 1000:.1f} ms, {runs + 1} debugfs runs")


def test_listdir_skips_unused_directory_slots(tmp_path):
    """mkfs pre-allocates empty entries in lost+found; they are not names."""
    src = tmp_path / "src"
    src.mkdir()
    img = tmp_path / "img.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(img), "8M"], check=True)
    with Ext4Image(str(img)) as g:
        assert g.listdir("/") == ["lost+found"]
        assert g.listdir("/lost+found") == []
