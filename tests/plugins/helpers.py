"""Small ext4 guest images and a plugin context for the plugin tests (no guest is booted)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mln_backends.imagefs import Ext4Image
from mln_core.config import Config
from mln_core.context import Context
from mln_core.guest import detect_family
from mln_core.plugins import make_plugin_manager
from mln_core.project import load_project

needs_debugfs = pytest.mark.skipif(shutil.which("debugfs") is None or shutil.which("mkfs.ext4") is None,
                                   reason="debugfs and mkfs.ext4 (e2fsprogs) are needed")

PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
          "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
          "bob:x:1000:1000::/home/bob:/bin/bash\n"
          "nagios:x:1001:1002::/home/nagios:/bin/bash\n")
GROUP = "root:x:0:\nwww-data:x:33:\nbob:x:1000:\nnagios:x:1002:\n"

APACHE2_CONF = """# apache2.conf (test copy of Debian's, shortened)
ServerRoot "/etc/apache2"
Timeout 300
IncludeOptional mods-enabled/*.load
IncludeOptional mods-enabled/*.conf
Include ports.conf
<Directory /var/www/>
\tOptions Indexes FollowSymLinks
\tAllowOverride None
\tRequire all granted
</Directory>
IncludeOptional conf-enabled/*.conf
IncludeOptional sites-enabled/*.conf
"""

DEFAULT_SITE = """<VirtualHost *:80>
\t# The ServerName directive sets the request scheme, hostname and port.
\t#ServerName www.example.com

\tServerAdmin webmaster@localhost
\tDocumentRoot /var/www/html

\tErrorLog ${APACHE_LOG_DIR}/error.log
\tCustomLog ${APACHE_LOG_DIR}/access.log combined
</VirtualHost>
"""

#: Apache 2.2 as in Ubuntu 12.04: sites-available/default, linked as sites-enabled/000-default.
APACHE22_CONF = """# apache2.conf (Apache 2.2, shortened)
ServerRoot "/etc/apache2"
<IfModule mpm_prefork_module>
    MaxClients          150
</IfModule>
Include mods-enabled/*.load
Include conf.d/
Include sites-enabled/
"""
DEFAULT_SITE_22 = """<VirtualHost *:80>
\tServerAdmin webmaster@localhost

\tDocumentRoot /var/www
\t<Directory /var/www/>
\t\tAllowOverride None
\t</Directory>
</VirtualHost>
"""


def debian_tree(root: Path, apache: str | None = "2.4", passwd: str = PASSWD) -> Path:
    """A fake Debian root filesystem in ``root``; ``apache``: "2.4", "2.2" or None."""
    for d in ("etc/network", "root", "home/bob", "bin", "var/www/html", "etc/systemd/system"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/network/interfaces").write_text("auto lo\niface lo inet loopback\n")
    (root / "bin/bash").write_text("")
    (root / "etc/passwd").write_text(passwd)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/shadow").write_text("".join(f"{ln.split(':')[0]}:*:19000:0:99999:7:::\n"
                                             for ln in passwd.splitlines()))
    os.chmod(root / "root", 0o700)
    a = root / "etc/apache2"
    if apache == "2.4":
        for d in ("sites-available", "sites-enabled", "conf-available", "conf-enabled", "mods-enabled"):
            (a / d).mkdir(parents=True, exist_ok=True)
        (a / "apache2.conf").write_text(APACHE2_CONF)
        (a / "sites-available/000-default.conf").write_text(DEFAULT_SITE)
        os.symlink("../sites-available/000-default.conf", a / "sites-enabled/000-default.conf")
    elif apache == "2.2":
        for d in ("sites-available", "sites-enabled", "conf.d", "mods-enabled"):
            (a / d).mkdir(parents=True, exist_ok=True)
        (a / "apache2.conf").write_text(APACHE22_CONF)
        (a / "sites-available/default").write_text(DEFAULT_SITE_22)
        os.symlink("../sites-available/default", a / "sites-enabled/000-default")
    return root


def make_image(directory: Path, name: str = "guest.ext4", size: str = "16M") -> Path:
    img = directory.parent / name
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", str(directory), str(img), size],
                   check=True)
    return img


def debian_image(tmp_path: Path, apache: str | None = "2.4", **kw) -> Path:
    tree = tmp_path / "tree"
    debian_tree(tree, apache, **kw)
    return make_image(tree)


def plugin_context(tmp_path: Path) -> Context:
    """A context with every installed plugin loaded, as ``mln build`` has it."""
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    cfg = Config()
    cfg.values["files"] = str(files)
    return Context(config=cfg, pm=make_plugin_manager())


def configure(ctx, text: str, img: Path, hosts=None, path: str | None = None):
    """Load the project ``text`` and run ``mln_configure_image`` of every plugin (through
    the plugin manager, as ``mln build`` does) for ``hosts`` (default: all) on ``img``."""
    loaded = load_project(path or "p.mln", ctx, text=text)
    ctx.project = loaded.project
    for name in hosts or list(loaded.project.hosts):
        with Ext4Image(str(img)) as g:
            g.family = detect_family(g)
            ctx.pm.hook.mln_configure_image(host=loaded.project.hosts[name], guest=g, ctx=ctx)
    return loaded.project


def stat(img: Path, path: str) -> str:
    """debugfs's ``stat`` of ``path`` (no pager, no terminal: debugfs would wait)."""
    return subprocess.run(["debugfs", "-R", f'stat "{path}"', str(img)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, "DEBUGFS_PAGER": "__none__"},
                          check=False).stdout


def mode_owner(img: Path, path: str) -> tuple[str, str, int, int]:
    """(type, mode as 4 octal digits, uid, gid) of ``path`` in the image."""
    st = stat(img, path)
    words = st.split()
    if "Inode:" not in words:
        raise AssertionError(f"{path} not in {img}: {st}")
    return (words[words.index("Type:") + 1], words[words.index("Mode:") + 1],
            int(words[words.index("User:") + 1]), int(words[words.index("Group:") + 1]))


def read(img: Path, path: str) -> str | None:
    with Ext4Image(str(img)) as g:
        return g.read_text(path)


def snapshot(img: Path) -> dict:
    """Every file, directory and link of the image: content (or "dir"/link), type, mode, owner."""
    out = {}
    with Ext4Image(str(img)) as g:
        stack = ["/"]
        while stack:
            d = stack.pop()
            for name in g.listdir(d):
                p = d.rstrip("/") + "/" + name
                if name == "lost+found":
                    continue
                meta = mode_owner(img, p)
                if meta[0] == "directory":
                    stack.append(p)
                    out[p] = ("dir", meta)
                elif meta[0] == "symlink":
                    dest = [ln for ln in stat(img, p).splitlines() if ln.startswith("Fast link dest:")]
                    out[p] = ("link", dest, meta)
                else:
                    out[p] = (g.read(p), meta)
    return out


def keypair(tmp_path, name="id_ed25519", comment="nagios@monitor") -> tuple[str, str]:
    """(path of a .pub file, its key line): made with ssh-keygen when it is installed."""
    priv = tmp_path / name
    if shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(priv)],
                       check=True, stdin=subprocess.DEVNULL)
    else:
        priv.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n")
        (tmp_path / f"{name}.pub").write_text(
            f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2Uta2V5LWZvci10ZXN0cy1vbmx5LTEyMzQ1Njc {comment}\n")
    pub = tmp_path / f"{name}.pub"
    return str(pub), pub.read_text().strip()
