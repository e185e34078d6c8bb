"""The ``libvirt`` server transport without a libvirtd: the URI it derives from mln.conf, the
configuration of the part it carries out, and what counts as a remote libvirt URI; the
backend's side of such a server against a fake libvirt module. (With a libvirtd on a
namespace server: tests/libvirt/test_remote.py.)"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from types import SimpleNamespace

import pytest

from mln_backends import libvirt as backend
from mln_backends import libvirt_domain as dom_xml
from mln_backends import libvirt_remote as remote
from mln_backends.libvirt_remote import is_remote
from mln_core.config import Config
from mln_core.errors import MlnError
from mln_core.servers import configured
from mln_plugins.transport_libvirt import default_uri, part_config


def config(*lines: str) -> Config:
    c = Config()
    for line in lines:
        key, value = line.split(None, 1)
        if key == "server":
            c.lists.setdefault(key, []).append(value)
        c.values[key] = value
    return c


def test_the_default_uri_is_qemu_ssh_with_the_key_and_host_keys_of_mln_conf(tmp_path):
    known = tmp_path / "known hosts"
    c = config("server sh2 libvirt root@10.0.0.12", "server sh3 libvirt [fe80::1]:2222",
               "ssh_identity /keys/id_ed25519", f"ssh_known_hosts {known}")
    servers = configured(c)
    u = default_uri(servers["sh2"], c, str(tmp_path))
    wrapper = tmp_path / "ssh"
    assert u == (f"qemu+ssh://root@10.0.0.12/system?no_tty=1&keyfile=/keys/id_ed25519&command={wrapper}")
    text = wrapper.read_text()
    assert f"""'UserKnownHostsFile="{known}"'""" in text and "StrictHostKeyChecking=yes" in text
    assert "GlobalKnownHostsFile=/dev/null" in text and text.rstrip().endswith('"$@"')
    assert stat.S_IMODE(os.stat(wrapper).st_mode) == 0o700
    assert default_uri(servers["sh3"], c, str(tmp_path)).startswith("qemu+ssh://[fe80::1]:2222/system?")
    # no known_hosts named: ssh checks ~/.ssh/known_hosts itself; never no_verify
    plain = config("server sh2 libvirt sh2.example.org")
    u = default_uri(configured(plain)["sh2"], plain, str(tmp_path / "none"))
    assert u == "qemu+ssh://sh2.example.org/system?no_tty=1" and "no_verify" not in u


def test_the_part_has_its_own_projects_the_managers_templates_and_the_servers_libvirtd(tmp_path):
    c = config(f"projects {tmp_path}/p", f"templates {tmp_path}/t", "service_host manager",
               "server sh2 libvirt root@10.0.0.12 pool=vms pool_path=/srv/vms", "san_path /san")
    c.lists["san_path"] = ["/san"]
    s = configured(c)["sh2"]
    part = part_config(c, s, f"{tmp_path}/p/.server-sh2", "qemu+ssh://x/system")
    assert part.projects_dir == f"{tmp_path}/p/.server-sh2" and part.templates_dir == f"{tmp_path}/t"
    assert part.get("service_host") == "sh2" and part.get("libvirt_uri") == "qemu+ssh://x/system"
    assert (part.get("libvirt_pool"), part.get("libvirt_pool_path")) == ("vms", "/srv/vms")
    assert part.getlist("server") == [] and part.get("server") is None and part.getlist("san_path") == ["/san"]


def test_remote_uris():
    assert is_remote("qemu+ssh://root@sh2/system") and is_remote("qemu://sh2.example.org/system")
    assert is_remote("qemu+libssh2://sh2/system?known_hosts=/x")
    assert not is_remote("qemu:///system") and not is_remote("qemu:///system?socket=/tmp/x/libvirt-sock")
    assert not is_remote("qemu+unix:///system") and not is_remote("not a uri")


# -- the backend's side of such a server, against a fake libvirt (no libvirtd, no root) -------------

class FakeError(Exception):
    def __init__(self, code: int, msg: str = "fake failure"):
        super().__init__(msg)
        self.code, self.msg = code, msg

    def get_error_code(self):
        return self.code

    def get_error_message(self):
        return self.msg


class FakeLibvirt:
    libvirtError = FakeError
    VIR_ERR_NO_DOMAIN, VIR_ERR_NO_STORAGE_POOL, VIR_ERR_NO_STORAGE_VOL = 42, 49, 50
    VIR_NODE_MEMORY_STATS_ALL_CELLS = -1


class Vol:
    def __init__(self, pool, name, data=b""):
        self.pool, self.name, self.data = pool, name, data

    def path(self):
        return f"{self.pool.dir}/{self.name}"

    def delete(self, flags):
        del self.pool.vols[self.name]

    def download(self, stream, offset, length, flags):
        stream.data = self.data


class Pool:
    def __init__(self, conn, name, dir, vols=(), active=True, fail=False):
        self.conn, self._name, self.dir, self.active, self.fail = conn, name, dir, active, fail
        self.vols = {v: Vol(self, v) for v in vols}

    def name(self):
        return self._name

    def isActive(self):
        return self.active

    def build(self, flags):
        if self.fail:
            raise FakeError(1, "cannot build the pool")

    def create(self, flags):
        self.active = True

    def undefine(self):
        del self.conn.pools[self._name]

    def XMLDesc(self, flags):
        return f"<pool type='dir'><name>{self._name}</name><target><path>{self.dir}</path></target></pool>"

    def storageVolLookupByName(self, name):
        if name not in self.vols:
            raise FakeError(FakeLibvirt.VIR_ERR_NO_STORAGE_VOL)
        return self.vols[name]

    def listVolumes(self):
        return list(self.vols)

    def refresh(self, flags):
        pass

    def info(self):
        return [2, 0, 0, 5 * 2**30]


class Stream:
    data = b""

    def recvAll(self, handler, opaque):
        handler(self, self.data, opaque)

    def finish(self):
        pass

    def abort(self):
        pass


class Conn:
    def __init__(self, fail=False):
        self.pools, self.fail = {}, fail

    def add(self, name, dir, vols=(), active=True):
        self.pools[name] = Pool(self, name, dir, vols, active)
        return self.pools[name]

    def storagePoolLookupByName(self, name):
        if name not in self.pools:
            raise FakeError(FakeLibvirt.VIR_ERR_NO_STORAGE_POOL)
        return self.pools[name]

    def storagePoolDefineXML(self, xml, flags):
        import xml.etree.ElementTree as ET
        t = ET.fromstring(xml)
        self.pools[t.findtext("name")] = p = Pool(self, t.findtext("name"), t.findtext("target/path"),
                                                  active=False, fail=self.fail)
        return p

    def newStream(self, flags):
        return Stream()

    def getInfo(self):
        return ["x86_64", 2048, 4]

    def getMemoryStats(self, cell, flags):
        return {"total": 2048 * 1024, "free": 1024 * 1024}


@pytest.fixture
def fake(monkeypatch):
    conn = Conn()
    monkeypatch.setattr(dom_xml, "binding", lambda: FakeLibvirt)
    monkeypatch.setattr(dom_xml, "connect", lambda u: conn)
    return conn


def fake_ctx(tmp_path, *lines, state=None):
    from mln_core.machine import local
    c = config(*lines)
    logged = []
    ctx = SimpleNamespace(config=c, log=logged.append, logged=logged, project_dir=str(tmp_path), store=None,
                          state=state if state is not None else {}, verbose=False, on=lambda host=None: local(False))
    ctx.path = lambda *parts: os.path.join(str(tmp_path), *parts)
    ctx.host_state = lambda host: ctx.state.setdefault("hosts", {}).setdefault(host.name, {})
    return ctx


HOST = SimpleNamespace(name="alpha", hypervisor="libvirt", project="p.q", fqname="alpha.p.q", kernel=None,
                       ramdisk=None, tree=None, swap=None, mounts=[], memory=256 * 2**20, interfaces=[])
DOMAIN = "alpha.p.q-abcdef"


def test_a_configuration_only_upgrade_keeps_the_volume_whatever_the_uri(tmp_path, monkeypatch, fake):
    """#1: the disk there stays when only the URI string changed (another key, wrapper, user)."""
    tpl = tmp_path / "t.qcow2"
    tpl.write_bytes(b"QFI\xfb" + bytes(4096))
    kept = {"uri": "qemu+ssh://sh2/system?keyfile=/old", "pool": "mln", "path": "/v", "disk": "/v/d.qcow2",
            "volumes": ["d.qcow2"]}
    ctx = fake_ctx(tmp_path, "libvirt_uri qemu+ssh://root@sh2/system?keyfile=/new",
                   state={"hosts": {"alpha": {"backend": {"remote": kept}}}})
    ctx.templates = SimpleNamespace(resolve=lambda n, w: SimpleNamespace(path=str(tpl), kernel=None, initrd=None,
                                                                        name="t"))
    monkeypatch.setattr(remote, "domain_type", lambda u, want: "qemu")
    monkeypatch.setattr(remote, "upload_host", lambda *a, **k: pytest.fail("the disk was sent again"))
    host = SimpleNamespace(**vars(HOST), template="t")
    disk = SimpleNamespace(path="disk.qcow2", format="qcow2", kind="file", extra={})
    out = backend.mln_build_host(host, disk, ctx)
    assert out["remote"] == dict(kept, uri="qemu+ssh://root@sh2/system?keyfile=/new")


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img")
def test_b_upgrade_k_fetches_the_guests_disk_from_the_pool(tmp_path, fake):
    """#2: mln upgrade -k moved the disk built here into kept/<host>/; the volume there (the
    guest's real disk) is fetched over it, with the manager's backing file, before it goes."""
    tpl = tmp_path / "t.raw"
    tpl.write_bytes(bytes(1 << 20))
    kept_dir = tmp_path / "kept" / "alpha"
    kept_dir.mkdir(parents=True)
    mine = kept_dir / "disk.qcow2"
    for path, backing, size in ((mine, str(tpl), "1M"), (tmp_path / "there.qcow2", "/var/lib/libvirt/x", "2M")):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", str(path),
                        size], check=True)
    there = (tmp_path / "there.qcow2").read_bytes()
    p = fake.add("mln", "/var/lib/libvirt/images/mln", [f"{DOMAIN}.0123abcd.qcow2"])
    p.vols[f"{DOMAIN}.0123abcd.qcow2"].data = there
    rec = {"uri": "qemu+ssh://sh2/system", "pool": "mln", "disk": f"{p.dir}/{DOMAIN}.0123abcd.qcow2",
           "volumes": [f"{DOMAIN}.0123abcd.qcow2"], "sources": {"template": str(tpl)}}
    ctx = fake_ctx(tmp_path, "libvirt_uri qemu+ssh://sh2/system",
                   state={"hosts": {"alpha": {"disk": {"kind": "file", "path": "hosts/alpha/disk.qcow2"},
                                              "backend": {"remote": rec}}}})
    backend.mln_remove_host(HOST, ctx)          # never started: no libvirt.json
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(mine)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["backing-filename"] == str(tpl) and info["backing-filename-format"] == "raw", info
    assert info["virtual-size"] == 2 << 20 and p.vols == {}        # the one there, then deleted there
    assert any("fetched into" in m for m in ctx.logged)
    # not kept (the disk built here still where the state has it): nothing is fetched
    p.vols[f"{DOMAIN}.0123abcd.qcow2"] = Vol(p, f"{DOMAIN}.0123abcd.qcow2", b"other")
    (tmp_path / "hosts" / "alpha").mkdir(parents=True)
    (tmp_path / "hosts" / "alpha" / "disk.qcow2").write_bytes(b"x")
    size = mine.stat().st_size
    backend.mln_remove_host(HOST, ctx)
    assert mine.stat().st_size == size and p.vols == {}


def test_c_a_hosts_volumes_are_matched_by_exact_names(tmp_path, fake):
    """#4c, #12: delete_host takes the domain's rotated console logs and disks of other builds;
    never another domain's whose name starts alike (project names hold dots)."""
    other = f"{DOMAIN}x.0123abcd.qcow2", "alpha.p.q-abcdef.q.0123abcd.qcow2", f"{DOMAIN}.console.logx"
    mine = (f"{DOMAIN}.0123abcd.qcow2", f"{DOMAIN}.89abcdef.qcow2", f"{DOMAIN}.89abcdef.swap",
            f"{DOMAIN}.console.log", f"{DOMAIN}.console.log.1")
    p = fake.add("mln", "/pool", mine + other + ("mln-shared-0123.qcow2",))
    ctx = fake_ctx(tmp_path)
    remote._leftovers(ctx, FakeLibvirt, p, HOST, DOMAIN, {"volumes": [f"{DOMAIN}.89abcdef.qcow2"]})
    assert sorted(p.vols) == sorted(set(mine + other + ("mln-shared-0123.qcow2",))
                                    - {f"{DOMAIN}.0123abcd.qcow2", f"{DOMAIN}.89abcdef.swap"})
    remote.delete_host(ctx, "qemu+ssh://sh2/system", {"pool": "mln", "volumes": []}, DOMAIN)
    assert sorted(p.vols) == sorted(other + ("mln-shared-0123.qcow2",))
    # the never-started branch of mln remove names the domain too
    p.vols = {n: Vol(p, n) for n in (f"{DOMAIN}.0123abcd.qcow2", f"{DOMAIN}.console.log.2")}
    ctx.state = {"hosts": {"alpha": {"backend": {"remote": {"uri": "qemu+ssh://sh2/system", "pool": "mln",
                                                           "volumes": [], "disk": "/pool/x"}}}}}
    ctx.config.values["libvirt_uri"] = "qemu+ssh://sh2/system"
    import mln_backends.libvirt_domain as d
    saved = d.domain_name
    d.domain_name = lambda host, ctx, project_dir=None: DOMAIN
    try:
        backend.mln_remove_host(HOST, ctx)
    finally:
        d.domain_name = saved
    assert p.vols == {}


def test_d_later_operations_use_the_uri_of_now(tmp_path):
    """#5: the URI of the server line as it is now, not the one a start stored; the stored one
    only when the configuration of now names no remote libvirtd."""
    ctx = fake_ctx(tmp_path, "libvirt_uri qemu+ssh://sh2/system?keyfile=/new")
    (tmp_path / "hosts" / "alpha").mkdir(parents=True)
    (tmp_path / "hosts" / "alpha" / "libvirt.json").write_text(
        json.dumps({"uri": "qemu+ssh://sh2/system?keyfile=/old", "domain": DOMAIN}))
    assert backend._where(HOST, ctx) == ("qemu+ssh://sh2/system?keyfile=/new", DOMAIN)
    ctx.config.values["libvirt_uri"] = "qemu:///system"
    assert backend._where(HOST, ctx) == ("qemu+ssh://sh2/system?keyfile=/old", DOMAIN)
    # a relative ssh_identity is stored absolute
    c = config("server sh2 libvirt sh2", "ssh_identity keys/id")
    assert f"keyfile={os.path.abspath('keys/id')}" in default_uri(configured(c)["sh2"], c, str(tmp_path))


def test_e_the_files_archive_of_each_server_has_its_own_inbox_name(tmp_path):
    """#6: two libvirt servers share the manager's templates directory, so its inbox."""
    from mln_core.remote import Fleet
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "motd").write_text("hi\n")
    fleet = object.__new__(Fleet)
    put = []
    fleet.servers = {"sh2": None, "sh3": None}
    fleet.inboxes = {"sh2": str(tmp_path / "in"), "sh3": str(tmp_path / "in")}
    fleet.ctx = SimpleNamespace(config=SimpleNamespace(files_dir=str(tmp_path / "files")), log=print)
    fleet.put = lambda name, src, dst: put.append(dst)
    project = SimpleNamespace(name="p", hosts={n: SimpleNamespace(name=n, files=[SimpleNamespace(source="motd")])
                                               for n in ("a", "b")})
    (tmp_path / "tmp").mkdir()
    sent = fleet.send_files(project, SimpleNamespace(hosts={"a": "sh2", "b": "sh3"}), str(tmp_path / "tmp"))
    assert sorted(put) == [str(tmp_path / "in" / f"p.{n}.files.tar.gz") for n in ("sh2", "sh3")], put
    assert [sent[n]["archive"] for n in ("sh2", "sh3")] == sorted(put)


def test_f_pool_handling(tmp_path, fake):
    """#7: a pool that could not be built is undefined again; another directory of an existing
    pool is said; volumes are found in the pool the host's build recorded, by their path."""
    fake.fail = True
    ctx = fake_ctx(tmp_path, "libvirt_pool_path /srv/vms")
    with pytest.raises(MlnError, match="cannot build the pool"):
        remote.pool(fake, ctx, "qemu+ssh://sh2/system")
    assert fake.pools == {}
    fake.fail = False
    p, where = remote.pool(fake, ctx, "qemu+ssh://sh2/system")
    assert (p.name(), where, p.isActive()) == ("mln", "/srv/vms", True)
    fake.add("old", "/var/old/", [f"{DOMAIN}.0123abcd.qcow2"])
    ctx.config.values["libvirt_pool"] = "old"
    p, where = remote.pool(fake, ctx, "qemu+ssh://sh3/system")
    assert where == "/var/old" and any("exists already, at /var/old, not at libvirt_pool_path /srv/vms" in m
                                       for m in ctx.logged), ctx.logged
    ctx.config.values["libvirt_pool"] = "mln"          # changed since the build: its volumes are in "old"
    rec = {"pool": "old", "path": "/var/old", "volumes": [f"{DOMAIN}.0123abcd.qcow2"], "sources": {}}
    remote.ready(HOST, ctx, "qemu+ssh://sh3/system", rec, None, DOMAIN)
    assert list(fake.pools["old"].vols) == [f"{DOMAIN}.0123abcd.qcow2"]


def test_g_capacity_has_no_disk_free_without_the_pool(tmp_path, fake):
    """#8: the manager's free disk is not reported as that server's."""
    ctx = fake_ctx(tmp_path)
    assert remote.node("qemu+ssh://sh2/system", ctx)["disk_free"] is None
    fake.add("mln", "/pool", active=False)
    assert remote.node("qemu+ssh://sh2/system", ctx)["disk_free"] is None
    fake.pools["mln"].active = True
    assert remote.node("qemu+ssh://sh2/system", ctx)["disk_free"] == 5 * 1024


@pytest.mark.parametrize("line, error", [
    ("server sh2 libvirt host/x?command=/tmp/evil", "must be a host name"),
    ("server sh2 libvirt ro%ot@sh2", "user name"),
    ("server sh2 libvirt [fe80::1]x", "host name"),
    ("server sh2 libvirt sh2 known_hosts=/k/%d", "known_hosts"),
    ('server sh2 libvirt sh2 known_hosts=/k/"x', "known_hosts"),
    ("server sh2 libvirt sh2 known_hosts=/k/${HOME}", "known_hosts"),
])
def test_h_server_line_values_are_checked(tmp_path, line, error):
    """#9: nothing of the line can change the URI or ssh's options; the error names the line."""
    c = config(line)
    with pytest.raises(MlnError, match=error) as e:
        default_uri(configured(c)["sh2"], c, str(tmp_path))
    assert f"'{line}' in mln.conf" in e.value.message


def test_h_ipv6_brackets_and_the_connection_hint(tmp_path, monkeypatch):
    """#9: root@[fe80::1] is bracketed once; #13: a server line's libvirtd that cannot be
    reached is said to be that line's, not mln.conf's libvirt_uri."""
    c = config("server sh2 libvirt root@[fe80::1]", "server sh3 libvirt fe80::2")
    assert default_uri(configured(c)["sh2"], c, str(tmp_path)).startswith("qemu+ssh://root@[fe80::1]/system?")
    assert default_uri(configured(c)["sh3"], c, str(tmp_path)).startswith("qemu+ssh://[fe80::2]/system?")

    class Lv(FakeLibvirt):
        @staticmethod
        def open(u):
            raise FakeError(38, "Cannot recv data: Host key verification failed.")
    monkeypatch.setattr(dom_xml, "binding", lambda: Lv)
    part = SimpleNamespace(config=config("libvirt_uri qemu+ssh://sh9/system", "libvirt_server_part sh9"))
    with pytest.raises(MlnError) as e:
        dom_xml.connect(dom_xml.uri(part))
    assert "line of server sh9 in mln.conf" in e.value.message and "libvirt_uri" not in e.value.message


def test_i_names_on_a_remote_libvirtd_hold_the_managers_id(tmp_path):
    """#3: two managers with the same projects directory and project that share one libvirtd
    name their domains and networks apart; a local libvirtd's names are as before."""
    names, ids = [], []
    for m in ("m1", "m2"):
        c = config(f"projects {tmp_path}/{m}", "libvirt_uri qemu+ssh://sh2/system")
        ctx = SimpleNamespace(config=c, project_dir="/srv/mln/p.q")
        names.append(dom_xml.domain_name(HOST, ctx))
        path = tmp_path / m / ".manager-id"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        ids.append(path.read_text())
        assert dom_xml.domain_name(HOST, ctx) == names[-1] and path.read_text() == ids[-1]     # made once
        sw = SimpleNamespace(name="lan", project="p.q", tree=None)
        names.append(remote.network_names(sw, SimpleNamespace(config=c, store=None))[0])
    assert len(set(names)) == 4 and ids[0] != ids[1] and names[0].startswith("alpha.p.q-")
    local = SimpleNamespace(config=config(f"projects {tmp_path}/m3"), project_dir="/srv/mln/p.q")
    assert dom_xml.domain_name(HOST, local) == "alpha.p.q-" + dom_xml.digest("/srv/mln/p.q", n=6)
    assert not (tmp_path / "m3").exists()
