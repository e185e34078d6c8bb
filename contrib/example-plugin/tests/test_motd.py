"""Tests of the motd plugin, written with mln's pytest plugin (``mln_core.testing``).

``mln_project`` runs ``mln`` commands on a project file in an isolated set-up;
``mln_image`` is a tiny ext4 guest image on which ``configure`` runs every installed
plugin's ``mln_configure_image``, as ``mln build`` does. No guest is booted: the whole
file runs in a few seconds.
"""
import pytest

from mln_core.errors import MlnError

PROJECT = """
global {
    project lab
    motd Welcome to %host% of project %project%
}
superclass quiet { motd no }
host web { template web.ext4; motd %host%: the web server (%template%) }
host db { superclass quiet }
host mail { }
"""


def test_mln_plugins_lists_motd(mln_project):
    r = mln_project("global { project t }\n").run("plugins")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.split()[0] == "motd")
    assert "mln-motd" in line and "mln_configure_image" in line and "mln_register_keywords" in line


def test_mln_check_knows_the_keyword(mln_project):
    r = mln_project(PROJECT).run("check")
    assert r.exit_code == 0, r.output
    assert "unknown" not in r.output


def test_mln_check_suggests_motd_for_a_typo(mln_project):
    r = mln_project("global { project t }\nhost a { motdd hello }\n").run("check")
    assert "unknown keyword 'motdd' in host a (did you mean 'motd'?)" in r.output


def test_mln_check_finds_wrong_settings_and_names_the_host(mln_project):
    r = mln_project("global { project t }\nhost a { motd }\nhost b { motd hi %hots% }\n").run("check")
    assert r.exit_code != 0
    assert "project.mln:2:10: error: host a: motd: 'motd' needs a text" in r.output
    assert "error: host b: motd: unknown placeholder %hots% in 'hi %hots%'" in r.output
    assert "Traceback" not in r.output
    # a wrong global line is reported once, not once per host
    r = mln_project("global { project t; motd %nope% }\nhost a { }\nhost b { }\n").run("check")
    assert r.output.count("error: global: motd: unknown placeholder %nope%") == 1, r.output


def test_configure_writes_etc_motd_and_is_idempotent(mln_image):
    images = {name: mln_image() for name in ("web", "db", "mail")}
    for name, img in images.items():
        img.configure(PROJECT, hosts=[name])
    assert images["web"].read("/etc/motd") == "web: the web server (web.ext4)\n"      # its own line
    assert images["mail"].read("/etc/motd") == "Welcome to mail of project lab\n"    # global
    assert images["db"].read("/etc/motd") is None                            # motd no: untouched
    # a second build (or an upgrade) of the same image gives the same file
    images["mail"].configure(PROJECT, hosts=["mail"])
    assert images["mail"].read("/etc/motd") == "Welcome to mail of project lab\n"


def test_the_template_s_own_motd_is_replaced(mln_image):
    img = mln_image({"/etc/network/interfaces": "", "/etc/motd": "The programs included with Debian...\n"})
    img.configure("global { project t }\nhost a { template deb.ext4; motd hi from %template% }\n")
    assert img.read("/etc/motd") == "hi from deb.ext4\n"


def test_a_windows_guest_is_refused_with_the_host_named(mln_image):
    img = mln_image({"/boot.ini": "[boot loader]\n"})
    with pytest.raises(MlnError) as e:
        img.configure("global { project t }\nhost win { motd hello }\n")
    assert str(e.value) == "host win: motd: a Windows guest has no /etc/motd; write 'motd no' in this host"
