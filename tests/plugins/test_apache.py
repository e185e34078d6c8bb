"""The apache plugin on small ext4 images with a fake /etc/apache2 (no guest is booted)."""
from __future__ import annotations

import re

import pytest

from mln_core.errors import MlnError

from .helpers import (
    DEFAULT_SITE,
    configure,
    debian_image,
    mode_owner,
    needs_debugfs,
    read,
    snapshot,
)

pytestmark = needs_debugfs

PROJECT = """
global {
    project webhosting
    apache {
        MaxClients 150
        KeepAlive Off
        ServerTokens Prod
    }
}
superclass web {
    apache { ServerTokens Minor }
}
host web14 {
    superclass web
    network eth0 { address 10.0.0.14; netmask 255.255.255.0 }
    apache {
        DocumentRoot /var/www/web14
        maxclients 200
    }
}
host plain {
    network eth0 { address 10.0.0.15; netmask 255.255.255.0 }
}
"""

SITE = "/etc/apache2/sites-available/000-default.conf"
ENABLED = "/etc/apache2/sites-enabled/000-default.conf"
CONF = "/etc/apache2/conf-available/mln.conf"


def test_global_and_host_directives_are_merged_and_the_host_wins(tmp_path, ctx):
    img = debian_image(tmp_path)
    configure(ctx, PROJECT, img, hosts=["web14"])
    conf = read(img, CONF).splitlines()
    # host > superclass > global; names compare case-insensitively; MaxClients -> MaxRequestWorkers
    assert [ln for ln in conf if not ln.startswith("#")][:3] == [
        "KeepAlive Off", "ServerTokens Minor", "MaxRequestWorkers 200"]
    assert "MaxRequestWorkers 150" not in conf and not any(ln.lower().startswith("maxclients") for ln in conf)
    assert "<Directory /var/www/web14>" in conf and "    Require all granted" in conf
    assert read(img, "/etc/apache2/conf-enabled/mln.conf") == read(img, CONF)
    assert mode_owner(img, "/etc/apache2/conf-enabled/mln.conf")[0] == "symlink"
    # DocumentRoot: the real file behind the sites-enabled link is edited, the link stays a link
    site = read(img, SITE)
    assert site == DEFAULT_SITE.replace("DocumentRoot /var/www/html", "DocumentRoot /var/www/web14")
    assert mode_owner(img, ENABLED)[0] == "symlink"
    assert read(img, ENABLED) == site
    assert mode_owner(img, "/var/www/web14") == ("directory", "0755", 0, 0)
    assert read(img, "/etc/apache2/apache2.conf").count("mln") == 0     # apache2.conf is left alone


def test_global_apache_alone_enables_nothing(tmp_path, ctx):
    img = debian_image(tmp_path)
    before = snapshot(img)
    configure(ctx, PROJECT, img, hosts=["plain"])
    after = snapshot(img)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert not any(p.startswith(("/etc/apache2", "/var/www")) for p in changed), changed


def test_configuring_twice_gives_the_same_image(tmp_path, ctx):
    img = debian_image(tmp_path)
    configure(ctx, PROJECT, img, hosts=["web14"])
    first = snapshot(img)
    configure(ctx, PROJECT, img, hosts=["web14"])
    assert snapshot(img) == first


def test_document_root_only_and_a_site_that_is_a_copy(tmp_path, ctx):
    """An enabled site that is a regular file (not a link) is edited itself."""
    img = debian_image(tmp_path)
    from mln_backends.imagefs import Ext4Image
    with Ext4Image(str(img)) as g:
        g.remove(ENABLED)
        g.write_text(ENABLED, DEFAULT_SITE)
    text = "global { project p }\nhost h { apache { DocumentRoot /srv/www } }\n"
    configure(ctx, text, img)
    assert mode_owner(img, ENABLED)[0] == "regular"
    assert "\tDocumentRoot /srv/www\n" in read(img, ENABLED)
    conf = read(img, CONF)
    assert "<Directory /srv/www>" in conf and "MaxRequestWorkers" not in conf


def test_apache_22_layout_keeps_maxclients_in_a_marked_section(tmp_path, ctx):
    img = debian_image(tmp_path, apache="2.2")
    configure(ctx, PROJECT, img, hosts=["web14"])
    main = read(img, "/etc/apache2/apache2.conf")
    section = main[main.index("# >>> mln apache >>>"):]
    assert section.splitlines()[1:4] == ["KeepAlive Off", "ServerTokens Minor", "MaxClients 200"]
    assert "    Order allow,deny" in section
    assert main.startswith("# apache2.conf (Apache 2.2")              # the rest is kept
    assert "\tDocumentRoot /var/www/web14\n" in read(img, "/etc/apache2/sites-available/default")
    assert mode_owner(img, "/etc/apache2/sites-enabled/000-default")[0] == "symlink"
    once = snapshot(img)
    configure(ctx, PROJECT, img, hosts=["web14"])
    assert snapshot(img) == once


def test_a_guest_without_apache_is_skipped_with_a_warning_naming_the_host(tmp_path, ctx, capsys):
    img = debian_image(tmp_path, apache=None)
    configure(ctx, PROJECT, img, hosts=["web14"])            # the original went on too
    msg = capsys.readouterr().err
    assert msg.startswith("warning: ") and len(ctx.warnings) == 1
    assert "host web14" in msg and "/etc/apache2/apache2.conf" in msg and "skipped" in msg
    assert "DocumentRoot" in msg and "template" in msg
    assert not [p for p in snapshot(img) if p.startswith(("/etc/apache2", "/var/www/web14"))]
    ctx.options["strict"] = True
    with pytest.raises(MlnError) as e:
        configure(ctx, PROJECT, img, hosts=["web14"])
    assert "host web14" in str(e.value) and "/etc/apache2/apache2.conf" in str(e.value)


def test_a_guest_without_a_default_site_skips_document_root_with_a_warning(tmp_path, ctx, capsys):
    img = debian_image(tmp_path)
    from mln_backends.imagefs import Ext4Image
    with Ext4Image(str(img)) as g:
        g.remove(ENABLED)
        g.remove(SITE)
    configure(ctx, PROJECT, img, hosts=["web14"])
    msg = capsys.readouterr().err
    assert re.search(r"warning: .*web14.*no default site.*DocumentRoot is not set \(skipped\)", msg)
    conf = read(img, CONF)
    assert "MaxRequestWorkers 200" in conf and "<Directory" not in conf    # the other directives are written
    ctx.options["strict"] = True
    with pytest.raises(MlnError, match="web14.*no default site"):
        configure(ctx, PROJECT, img, hosts=["web14"])


def test_a_relative_document_root_is_refused_by_check(tmp_path, ctx):
    from mln_core.project import load_project
    with pytest.raises(MlnError, match="DocumentRoot must be an absolute path"):
        load_project("p.mln", ctx, text="global { project p }\nhost h { apache { DocumentRoot www } }\n")


def test_the_keywords_are_declared(mln_plain):
    path = mln_plain.write("p.mln", PROJECT)
    r = mln_plain.mln("check", "-f", str(path))
    assert r.returncode == 0, r.output
    assert "unknown" not in r.output


def test_maxrequestworkers_in_a_host_overrides_maxclients_in_global(tmp_path, ctx):
    img = debian_image(tmp_path)
    text = PROJECT.replace("maxclients 200", "MaxRequestWorkers 99")
    configure(ctx, text, img, hosts=["web14"])
    conf = read(img, CONF)
    assert "MaxRequestWorkers 99\n" in conf and "150" not in conf
