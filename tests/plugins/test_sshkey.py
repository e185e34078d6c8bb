"""The sshkey plugin on small ext4 images (no guest is booted)."""
from __future__ import annotations

import pytest

from mln_backends.imagefs import Ext4Image
from mln_core.errors import MlnError

from .helpers import (
    configure,
    debian_image,
    keypair,
    mode_owner,
    needs_debugfs,
    read,
    snapshot,
)

pytestmark = needs_debugfs

LITERAL = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHl1dGVyYWwta2V5LWZvci1tbG4tdGVzdHMtb25seQ admin@lab"
UNMANAGED = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDnotmanagedbymln old@key"


def project(*lines: str, users: str = "") -> str:
    body = "\n        ".join(lines)
    return (f"global {{ project p }}\nhost web14 {{\n    {users}\n"
            f"    sshkey {{\n        {body}\n    }}\n}}\n")


def test_keys_from_a_file_and_literal_with_modes_and_owners(tmp_path, ctx):
    pub, key = keypair(tmp_path)
    img = debian_image(tmp_path)
    configure(ctx, project(f"nagios {pub}", f"root {LITERAL}", f"nagios {LITERAL}"), img)
    nagios = read(img, "/home/nagios/.ssh/authorized_keys")
    assert nagios.splitlines() == ["# >>> mln sshkey >>>", key, LITERAL, "# <<< mln sshkey <<<"]
    assert read(img, "/root/.ssh/authorized_keys").splitlines()[1] == LITERAL
    # nagios is uid 1001, gid 1002 in the guest's /etc/passwd; its home did not exist
    assert mode_owner(img, "/home/nagios") == ("directory", "0755", 1001, 1002)
    assert mode_owner(img, "/home/nagios/.ssh") == ("directory", "0700", 1001, 1002)
    assert mode_owner(img, "/home/nagios/.ssh/authorized_keys") == ("regular", "0600", 1001, 1002)
    assert mode_owner(img, "/root/.ssh") == ("directory", "0700", 0, 0)
    assert mode_owner(img, "/root/.ssh/authorized_keys") == ("regular", "0600", 0, 0)
    assert mode_owner(img, "/root")[1] == "0700"            # an existing home is left as it was


def test_idempotent_and_keys_not_managed_by_mln_are_kept(tmp_path, ctx):
    pub, key = keypair(tmp_path)
    img = debian_image(tmp_path)
    with Ext4Image(str(img)) as g:     # bob already has two keys, one of which mln installs too
        g.mkdir("/home/bob/.ssh", 0o700, 1000, 1000)
        g.write_text("/home/bob/.ssh/authorized_keys", f"{UNMANAGED}\n{LITERAL}\n", 0o600, 1000, 1000)
    text = project(f"bob {pub}", f"bob {LITERAL}", f"bob {pub}")
    configure(ctx, text, img)
    first = snapshot(img)
    assert read(img, "/home/bob/.ssh/authorized_keys").splitlines() == [
        UNMANAGED, LITERAL, "# >>> mln sshkey >>>", key, "# <<< mln sshkey <<<"]
    configure(ctx, text, img)
    assert snapshot(img) == first
    # a key removed from the project file leaves the guest at the next build; others stay
    configure(ctx, project(f"bob {LITERAL}"), img)
    assert read(img, "/home/bob/.ssh/authorized_keys").splitlines() == [UNMANAGED, LITERAL]


def test_users_from_a_users_block_and_tilde_and_relative_paths(tmp_path, ctx, monkeypatch):
    home = tmp_path / "me"
    (home / ".ssh").mkdir(parents=True)
    _, key = keypair(home / ".ssh")
    (tmp_path / "keys").mkdir()
    _, key2 = keypair(tmp_path / "keys", "other", "other@x")
    monkeypatch.setenv("HOME", str(home))
    img = debian_image(tmp_path)
    text = project("carol ~/.ssh/id_ed25519.pub", "carol keys/other.pub",
                   users="users { carol * /srv/carol 3000 }")
    configure(ctx, text, img, path=str(tmp_path / "p.mln"))          # relative to the project file
    assert read(img, "/srv/carol/.ssh/authorized_keys").splitlines()[1:3] == [key, key2]
    assert mode_owner(img, "/srv/carol/.ssh/authorized_keys")[2:] == (3000, 3000)


def test_a_missing_key_file_names_host_user_and_line(tmp_path, ctx):
    img = debian_image(tmp_path)
    missing = tmp_path / "nope.pub"
    with pytest.raises(MlnError) as e:
        configure(ctx, project("root " + LITERAL, f"nagios {missing}"), img)
    msg = str(e.value)
    assert "host web14" in msg and "user nagios" in msg and f"line 'nagios {missing}'" in msg
    assert "p.mln:6:" in msg and "does not exist" in msg


def test_a_user_missing_in_the_guest_is_skipped_with_a_warning_naming_host_user_and_line(tmp_path, ctx,
                                                                                          capsys):
    img = debian_image(tmp_path)
    configure(ctx, project(f"dave {LITERAL}", f"root {LITERAL}"), img)     # the original went on too
    msg = capsys.readouterr().err
    assert msg.startswith("warning: ") and len(ctx.warnings) == 1
    assert "host web14" in msg and "user dave" in msg and "does not exist in the guest" in msg
    assert "p.mln:5:" in msg and "not installed (skipped)" in msg
    assert read(img, "/root/.ssh/authorized_keys").splitlines()[1] == LITERAL   # the rest is done
    assert "home/dave" not in snapshot(img)


def test_a_user_missing_in_the_guest_is_an_error_with_strict(tmp_path, ctx):
    img = debian_image(tmp_path)
    ctx.options["strict"] = True
    with pytest.raises(MlnError) as e:
        configure(ctx, project(f"dave {LITERAL}"), img)
    msg = str(e.value)
    assert "host web14" in msg and "user dave" in msg and "does not exist in the guest" in msg
    assert "--strict" in msg


def test_a_private_key_is_refused(tmp_path, ctx):
    pub, _ = keypair(tmp_path)
    img = debian_image(tmp_path)
    with pytest.raises(MlnError, match="private key"):
        configure(ctx, project(f"root {pub[:-4]}"), img)


def test_check_warns_about_a_missing_key_file_and_rejects_a_line_without_key(mln_plain):
    path = mln_plain.write("p.mln", project(f"nagios {mln_plain.root}/absent.pub"))
    r = mln_plain.mln("check", "-f", str(path))
    assert "absent.pub does not exist on this machine" in r.output
    assert "unknown" not in r.output
    path = mln_plain.write("q.mln", project("nagios"))
    r = mln_plain.mln("check", "-f", str(path))
    assert r.returncode != 0 and "needs a user and a key" in r.output
