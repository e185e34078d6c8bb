"""``mln build`` goes on, with a warning, where the original went on (an sshkey user the
template lacks, an apache block on a template without Apache); ``--strict`` makes such a
warning an error and nothing is built (no guest is booted)."""
from __future__ import annotations

from .helpers import debian_tree, make_image, needs_debugfs, read

pytestmark = needs_debugfs

LITERAL = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHl1dGVyYWwta2V5LWZvci1tbG4tdGVzdHMtb25seQ admin@lab"
PROJECT = f"""global {{ project lax }}
host web {{
    template noapache.ext4
    memory 64M
    sshkey {{
        dave {LITERAL}
        root {LITERAL}
    }}
    apache {{ DocumentRoot /var/www/web }}
}}
"""


def _setup(env, tmp_path):
    img = make_image(debian_tree(tmp_path / "tree", apache=None), "noapache.ext4", "16M")
    r = env.mln("register_template", "-t", str(img), "-m", "Debian-like, no Apache, no user dave")
    assert r.returncode == 0, r.output
    return env.write("lax.mln", PROJECT)


def test_missing_user_and_missing_apache_are_warnings_and_strict_makes_them_errors(mln_plain, tmp_path):
    path = _setup(mln_plain, tmp_path)
    r = mln_plain.mln("build", "--strict", "-f", str(path))
    assert r.returncode == 1, r.output
    error = [ln for ln in r.stderr.splitlines() if ln.startswith("mln: error: host web: configure image: ")]
    assert len(error) == 1 and "--strict" in error[0], r.stderr
    assert "user dave" in error[0] or "/etc/apache2/apache2.conf" in error[0]
    assert not (mln_plain.projects / "lax").exists()
    assert not [p for p in mln_plain.projects.iterdir() if "lax" in p.name and not p.name.endswith(".lock")]   # no staging left

    r = mln_plain.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2, r.stderr
    sshkey = next(w for w in warnings if "sshkey" in w)
    apache = next(w for w in warnings if "apache:" in w)
    assert "host web, user dave" in sshkey and "not installed (skipped)" in sshkey
    assert "host web" in apache and "/etc/apache2/apache2.conf" in apache and "skipped" in apache
    disk = mln_plain.projects / "lax" / "images" / "web"
    assert read(disk, "/root/.ssh/authorized_keys").splitlines()[1] == LITERAL     # the rest was done

    # a failed --strict build -r keeps the old build: the same disk file, version 1
    before = (disk.stat().st_ino, disk.stat().st_mtime_ns)
    r = mln_plain.mln("build", "--strict", "-r", "-f", str(path))
    assert r.returncode == 1 and "--strict" in r.stderr
    assert (disk.stat().st_ino, disk.stat().st_mtime_ns) == before
    assert (mln_plain.projects / "lax" / "version").read_text().strip() == "1"
    assert read(disk, "/root/.ssh/authorized_keys").splitlines()[1] == LITERAL
    assert mln_plain.mln("remove", "-f", "-p", "lax").returncode == 0
