"""``mln build`` of the article's webhosting example (spec 3.7): apache and sshkey together.

The example reads the key of the local nagios account, /home/nagios/.ssh/id_rsa.pub. The
test does not create that path on this machine: it copies the example into tmp_path and
substitutes the key path with a key file it generates there. The template
``ubuntu-lamp.ext3`` is a small ext4 image with an Apache 2.2 tree (Ubuntu 12.04 layout)
and a ``nagios`` user whose home is /home/nagios. The host is a Xen PV guest, which needs a
kernel on the managing host: mln.conf names a stand-in file (the guest is not started).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mln_core.lang.parser import parse_text

from .helpers import (
    APACHE22_CONF,
    debian_tree,
    keypair,
    make_image,
    mode_owner,
    needs_debugfs,
    read,
)

pytestmark = needs_debugfs

EXAMPLE = Path("/work/shared/examples/webhosting.mln")
if not EXAMPLE.exists():
    EXAMPLE = Path(__file__).resolve().parents[1] / "core" / "examples" / "webhosting.mln"
KEY_PATH = "/home/nagios/.ssh/id_rsa.pub"


@pytest.fixture
def example(mln_plain, tmp_path):
    if not EXAMPLE.exists():
        pytest.skip("the webhosting example is not available")
    pub, key = keypair(tmp_path, "id_rsa", "nagios@monitor")
    text = EXAMPLE.read_text()
    assert KEY_PATH in text
    path = mln_plain.write("webhosting.mln", text.replace(KEY_PATH, pub))
    tree = debian_tree(tmp_path / "lamp", apache="2.2")
    img = make_image(tree, "ubuntu-lamp.ext3", "24M")
    r = mln_plain.mln("register_template", "-t", str(img), "-m", "fake LAMP template for the example")
    assert r.returncode == 0, r.output
    kernel = tmp_path / "vmlinuz-xen"
    kernel.write_bytes(b"stand-in for a Xen PV guest kernel\n")
    with open(mln_plain.config, "a") as f:
        f.write(f"xen_kernel {kernel}\n")
    yield path, key
    mln_plain.mln("remove", "-f", "-p", "webhosting")


def test_webhosting_example_builds_and_individualizes(mln_plain, example):
    path, key = example
    r = mln_plain.mln("build", "-f", str(path))
    if r.returncode != 0 and re.search(r"no installed backend builds 'xen' hosts", r.output):
        # No Xen backend installed (it is optional): build the same project for UML,
        # which individualizes the same kind of raw image, and check the image.
        text = path.read_text()
        assert "    xen\n" in text
        path.write_text(text.replace("    xen\n", "    hypervisor uml\n"))
        r = mln_plain.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "PROJECT webhosting FINISHED" in r.stderr
    disk = mln_plain.projects / "webhosting" / "images" / "web14"
    assert disk.exists(), list((mln_plain.projects / "webhosting" / "images").iterdir())

    site = read(disk, "/etc/apache2/sites-available/default")
    assert "\tDocumentRoot /var/www/web14\n" in site and "/var/www\n" not in site
    assert mode_owner(disk, "/etc/apache2/sites-enabled/000-default")[0] == "symlink"
    conf = read(disk, "/etc/apache2/apache2.conf")
    assert conf.startswith(APACHE22_CONF)
    assert "# >>> mln apache >>>\nMaxClients 150\n<Directory /var/www/web14>" in conf     # Apache 2.2
    assert mode_owner(disk, "/var/www/web14")[0] == "directory"

    keys = read(disk, "/home/nagios/.ssh/authorized_keys")
    assert keys == f"# >>> mln sshkey >>>\n{key}\n# <<< mln sshkey <<<\n"
    assert mode_owner(disk, "/home/nagios/.ssh") == ("directory", "0700", 1001, 1002)
    assert mode_owner(disk, "/home/nagios/.ssh/authorized_keys") == ("regular", "0600", 1001, 1002)
    assert read(disk, "/etc/hostname") == "web14\n"


def test_the_example_parses_without_unknown_keywords(mln_plain, example):
    path, _ = example
    assert not parse_text(path.read_text(), str(path)).problems.items
    r = mln_plain.mln("check", "-f", str(path))
    assert "unknown" not in r.output, r.output
