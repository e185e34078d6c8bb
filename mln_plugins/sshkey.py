"""Plugin ``sshkey``: install SSH public keys into users' ``authorized_keys`` (spec 3.7, 5.4).

::

    host web14 {
        sshkey {
            nagios /home/nagios/.ssh/id_rsa.pub        # a public-key file on this machine
            root   ~/.ssh/id_ed25519.pub               # ~ and ~user work
            root   ssh-ed25519 AAAAC3Nza... admin@lab  # or the key itself
        }
    }

* Each line is ``USER KEY``. ``KEY`` is either the text of a public key (it has a key
  type such as ``ssh-ed25519`` followed by the base64 key; options such as
  ``from="10.0.0.0/8"`` before it are kept) or the path of a file on the managing host
  (the machine that runs ``mln build``) holding one or more public keys: absolute,
  ``~/...``, ``~user/...``, or relative to the project file's directory.
* The key goes into ``HOME/.ssh/authorized_keys`` of that user in the guest. ``root``'s
  home is ``/root``; any other user's home, uid and gid come from the guest's
  ``/etc/passwd`` (users made by a ``users`` block in the same project are there
  already, because guestconfig runs first). Missing directories are created; ``.ssh``
  gets mode 700 and ``authorized_keys`` 600, both owned by the user.
* Idempotent: mln's keys live in a marked section of the file (``# >>> mln sshkey >>>``),
  which is rewritten at every build, so a key is never added twice and a key removed
  from the project file disappears at the next ``upgrade``. Lines outside the section
  (keys not managed by mln) are kept, and a key that is already there is not repeated.
* Errors name the host, the user and the project-file line: a key file that does not
  exist or holds no public key (a private key, say).
* A user that does not exist in the guest (or a guest without ``/etc/passwd``) is a
  warning naming the host, the user and the line: that user's keys are skipped and the
  build goes on, as in the original (``mln build --strict`` makes it an error).
"""
from __future__ import annotations

import os
import re

from mln_core import hookimpl
from mln_core.errors import MlnError, Problem
from mln_core.guest import set_section

NAME = "sshkey"
#: A key type followed by its base64 blob, anywhere in a line (options may come first).
KEY = re.compile(r"(?:^|\s)((?:ssh|ecdsa|sk)-[A-Za-z0-9.@-]+)\s+([A-Za-z0-9+/]{16,}={0,3})(?=\s|$)")
USER = re.compile(r"[a-z_][a-z0-9_.-]*\$?\Z", re.IGNORECASE)


@hookimpl
def mln_register_keywords(registry):
    registry.block("host", NAME, "lines", "SSH keys to authorize: USER KEY-TEXT or USER PATH-OF-.pub-FILE")


def _lines(host):
    block = host.tree.block(NAME) if host.tree is not None else None
    return block.lines if block is not None else []


def _where(host, line) -> str:
    at = f" at {line.pos}" if line.pos else ""
    return f"host {host.name}, user {line.words[0]} (line '{line.text}'{at})"


def _is_literal(text: str) -> bool:
    return KEY.search(text) is not None


def key_path(text: str, project) -> str:
    """The file a path-style key refers to, on the managing host."""
    if project is None:
        return os.path.abspath(os.path.expanduser(text))
    return project.local_path(text)


def keys_of(host, line, project) -> list[str]:
    """The public-key lines a ``USER KEY`` line stands for (read from the file if a path)."""
    text = " ".join(line.words[1:])
    if _is_literal(text):
        return [text]
    path = key_path(text, project)
    try:
        if os.path.exists(path) and not os.path.isfile(path):    # a FIFO would block, a device never end
            raise MlnError(f"sshkey: {_where(host, line)}: {path} is not a regular file", f"host {host.name}")
        with open(path, encoding="utf-8", errors="replace") as f:
            content = f.read(2**20 + 1)
        if len(content) > 2**20:
            raise MlnError(f"sshkey: {_where(host, line)}: {path} is larger than 1 MB: no public key file",
                           f"host {host.name}")
    except FileNotFoundError:
        raise MlnError(f"sshkey: {_where(host, line)}: the key file {path} does not exist on this machine",
                       f"host {host.name}") from None
    except OSError as e:
        raise MlnError(f"sshkey: {_where(host, line)}: cannot read the key file {path}: {e.strerror or e}",
                       f"host {host.name}") from None
    keys = [ln.strip() for ln in content.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    bad = [k for k in keys if not _is_literal(k)]
    if not keys or bad:
        what = "a private key, not a public one" if "PRIVATE KEY" in content else "no OpenSSH public key"
        raise MlnError(f"sshkey: {_where(host, line)}: {path} holds {what} (expected lines such as "
                       "'ssh-ed25519 AAAA... comment', e.g. a .pub file)", f"host {host.name}")
    return keys


def _identity(key: str) -> tuple[str, str] | None:
    m = KEY.search(key)
    return (m.group(1), m.group(2)) if m else None


@hookimpl
def mln_validate(project, ctx):
    problems = []
    for host in project.hosts.values():
        for line in _lines(host):
            if len(line.words) < 2:
                problems.append(Problem("error", f"host {host.name}: sshkey: '{line.text}' needs a user "
                                                 "and a key (the key text, or the path of a .pub file)",
                                        line.pos))
                continue
            if not USER.match(line.words[0]):
                problems.append(Problem("error", f"host {host.name}: sshkey: bad user name '{line.words[0]}'",
                                        line.pos))
            text = " ".join(line.words[1:])
            path = None if _is_literal(text) else key_path(text, project)
            if path is not None and not os.path.isfile(path):
                problems.append(Problem("warning", f"host {host.name}: sshkey: user {line.words[0]}: {path} "
                                                   "does not exist on this machine, so 'mln build' will fail",
                                        line.pos))
    return problems


def _account(host, guest, line, passwd: str | None, ctx) -> tuple[str, int, int] | None:
    """(home, uid, gid) of the line's user in the guest; None, with a warning, if the
    guest has no such user (the original went on too; ``--strict`` makes it an error)."""
    user = line.words[0]
    rows = [r.split(":") for r in (passwd or "").splitlines() if r.strip()]
    row = next((r for r in rows if r[0] == user and len(r) >= 6), None)
    if user == "root":
        return "/root", 0, 0
    if passwd is None:
        why = f"the image (template {host.template}) has no /etc/passwd"
    elif row is None or not (row[2].isascii() and row[2].isdigit() and row[3].isascii() and row[3].isdigit()):
        why = f"user {user} does not exist in the guest's /etc/passwd (template {host.template})"
    else:
        return row[5] or "/", int(row[2]), int(row[3])
    ctx.warn(f"sshkey: {_where(host, line)}: {why}, so the keys of {user} are not installed (skipped); "
             "create the user with a 'users' block or in the template")
    return None


@hookimpl
def mln_configure_image(host, guest, ctx):
    lines = _lines(host)
    if not lines:
        return
    project = getattr(ctx, "project", None)
    passwd = guest.read_text("/etc/passwd")
    wanted: dict[str, list[str]] = {}          # user -> keys, in the order of the file
    accounts: dict[str, tuple[str, int, int]] = {}
    for line in lines:
        if len(line.words) < 2:
            raise MlnError(f"sshkey: {_where(host, line)}: give a user and a key", f"host {host.name}")
        user = line.words[0]
        keys = keys_of(host, line, project)          # a bad key is an error, also for a missing user
        if user not in accounts:
            accounts[user] = _account(host, guest, line, passwd, ctx)
        if accounts[user] is not None:
            wanted.setdefault(user, []).extend(keys)
    for user, keys in wanted.items():
        home, uid, gid = accounts[user]
        _install(guest, home, uid, gid, keys)


def _install(guest, home: str, uid: int, gid: int, keys: list[str]) -> None:
    if not guest.is_dir(home):
        guest.mkdir(home, 0o755, uid, gid)
    ssh = home.rstrip("/") + "/.ssh"
    path = ssh + "/authorized_keys"
    guest.mkdir(ssh, 0o700, uid, gid)
    text = guest.read_text(path) or ""
    present = {_identity(ln) for ln in set_section(text, NAME, None).splitlines()}
    section, seen = [], set()
    for key in keys:
        ident = _identity(key)
        if ident in present or ident in seen:
            continue
        seen.add(ident)
        section.append(key)
    guest.write_text(path, set_section(text, NAME, "\n".join(section) if section else None), 0o600, uid, gid)
