"""Names and places the backends share: interface names, MAC addresses, socket dirs.

* Linux interface names have at most 15 characters: ``ifname`` keeps a readable name
  when it fits and otherwise a prefix plus a hash of the full name, so two different
  switches or taps never get the same name.
* Unix socket paths have at most 107 characters, and project directories can be deep:
  sockets (vde switches, QMP, UML's mconsole) live in a short per-project directory
  under ``/run/mln`` (``/tmp/mln-<uid>`` when /run is not writable).
* MAC addresses are derived from project, host and interface, so a rebuilt host keeps
  its MAC unless the project file sets one.

Processes, pids and signals are the machine's business: backends use ``ctx.on(host)``
(:class:`mln_core.machine.Machine`: ``read_pid``, ``alive``, ``kill_and_wait``).
"""
from __future__ import annotations

import os
import re

IFNAMSIZ = 15
_IFNAME_OK = re.compile(r"[A-Za-z0-9_.-]+\Z")


def digest(*parts: str, n: int = 8) -> str:
    import hashlib
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:n]


def ifname(readable: str, *key: str, prefix: str = "mln") -> str:
    """``readable`` if it is a valid interface name, else ``prefix`` + hash of ``key``."""
    if len(readable) <= IFNAMSIZ and _IFNAME_OK.match(readable):
        return readable
    head = re.sub(r"[^A-Za-z0-9]", "", readable)[:IFNAMSIZ - 9] or prefix
    return f"{head}-{digest(*key, n=IFNAMSIZ - len(head) - 1)}"


def mac_address(oui: str, *key: str) -> str:
    """A stable locally administered MAC: ``oui`` (3 bytes "52:54:00") + 3 bytes of hash."""
    h = digest(*key, n=6)
    return f"{oui}:{h[0:2]}:{h[2:4]}:{h[4:6]}"


def runtime_dir(ctx, *parts: str, create: bool = False) -> str:
    """A short directory for the sockets of one project object (made if ``create``)."""
    base = "/run/mln" if os.access("/run", os.W_OK) else f"/tmp/mln-{os.getuid()}"
    d = os.path.join(base, f"{digest(os.path.realpath(ctx.project_dir), n=10)}-{'-'.join(parts)}"[:60])
    if create:
        os.makedirs(d, mode=0o755, exist_ok=True)
    return d


def saved_state_path(host, ctx) -> str:
    """Where ``mln stop -S`` saves a host's memory and ``mln start`` resumes it from:
    ``<project>/hosts/<host>/<host>.ram`` (spec 7.1)."""
    return ctx.path("hosts", host.name, f"{host.name}.ram")

