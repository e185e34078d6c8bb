#!/usr/bin/env python3
"""fake_xl: a FAKE ``xl`` for the tests of the Xen backend (Xen cannot run on test machines).

It is not Xen. The tests put an executable named ``xl`` that runs this script first on
PATH; it imitates the few ``xl`` commands mln uses, well enough to test the command runner:

* every call is appended to ``$FAKE_XL_LOG`` as one JSON line ``{"argv": [...], "cwd": ...}``;
* the domains that "exist" are kept in the JSON file ``$FAKE_XL_STATE`` (name -> state letters);
* ``create CFG`` reads ``name = "..."`` from CFG (relative to the current directory, as xl
  does) and makes that domain exist (``-b----``); it fails if the domain exists already;
* ``list NAME`` prints xl's table and exits 0 if NAME exists, else prints xl's error and
  exits 1; ``list`` alone lists every domain;
* ``shutdown [-F] NAME`` / ``destroy NAME`` remove the domain (as if it stopped at once);
  with ``$FAKE_XL_SLOW_SHUTDOWN`` set, ``shutdown`` only marks it ``--s---`` (shutting down);
* ``save NAME FILE`` writes FILE (xl's header line, then the name) and removes the domain;
  with ``$FAKE_XL_FAIL_SAVE`` set, it writes only the header line and fails as xl does when
  the disk is full (xl resumes the guest then: the domain stays);
  ``restore [CFG] FILE`` brings the domain of FILE back; it fails as xl does when FILE is
  missing or has no xl header (corrupt), or when the domain exists already.
* ``migrate [-s SSH] [-e] [-C CFG] [-p] [-D] [--debug] NAME HOST`` (xl migrates live over
  ssh to ``xl migrate-receive`` on HOST): the receiving end is the fake itself with the
  state ``$FAKE_XL_PEERS/HOST/domains.json`` and the log ``$FAKE_XL_PEERS/HOST/calls.jsonl``
  (the call is logged there as ``migrate-receive``); NAME then exists there (paused with
  ``-p``) and no longer here. It fails as xl does when NAME does not exist, when NAME exists
  on HOST already (the receiver cannot create it), without ``$FAKE_XL_PEERS`` (ssh cannot
  reach HOST), or with ``$FAKE_XL_FAIL_MIGRATE`` set (the receiver fails mid-way): xl
  resumes the guest at the sender then, so NAME stays here, running;
* ``migrate-receive`` (what ssh runs on the receiver) reads the fake's "stream", one JSON
  line ``{"name": ..., "paused": ...}``, from stdin and makes that domain exist;
* ``unpause NAME`` lets a paused domain run; ``info`` prints a few lines of ``xl info``,
  ``free_memory`` (MB) from ``$FAKE_XL_FREE_MEMORY`` (default 65536).

Tests change ``$FAKE_XL_STATE`` directly to imitate a domain that crashed or stopped.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import sys


def _load(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _save(path: str, state: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)


def _no_domain(name: str) -> int:
    print(f"{name} is an invalid domain identifier (rc=-6)", file=sys.stderr)
    return 1


#: the first line of a file written by ``xl save`` (xl_saverestore.c: savefileheader_magic)
SAVE_MAGIC = "Xen saved domain, xl format"


def _table(domains: dict) -> None:
    print(f"{'Name':<40}{'ID':>5}{'Mem':>6}{'VCPUs':>6}\t{'State':<8}Time(s)")
    for n, (name, st) in enumerate(sorted(domains.items()), 1):
        print(f"{name:<40}{n:>5}{128:>6}{1:>6}\t{st:<8}{1.5:>7}")


#: xl migrate's options: those that take a value, and flags
MIGRATE_VALUE = ("-s", "-C")
MIGRATE_FLAGS = ("-e", "-p", "-D", "--debug")


def _receive(state: dict, name: str, paused: bool) -> int:
    """The receiving end (``xl migrate-receive``), with this machine's ``state``."""
    print("migration target: Ready to receive domain.", file=sys.stderr)
    if not name:
        print("migration target: no domain in the stream", file=sys.stderr)
        return 1
    if name in state:
        print(f"domain with name {name} already exists\n"
              f"migration target: Domain creation failed (code -3).", file=sys.stderr)
        return 3
    state[name] = "--p---" if paused else "-b----"
    print("migration target: Transfer complete, requesting permission to start domain.", file=sys.stderr)
    return 0


def _migrate(words: list[str], state: dict) -> int:
    opts, rest, i = {}, [], 0
    while i < len(words):
        w = words[i]
        if w in MIGRATE_VALUE and i + 1 < len(words):
            opts[w], i = words[i + 1], i + 2
            continue
        if w in MIGRATE_FLAGS:
            opts[w] = True
        elif w.startswith("-"):
            print(f"migrate: invalid option -- '{w.lstrip('-')}'", file=sys.stderr)
            return 2
        else:
            rest.append(w)
        i += 1
    if len(rest) != 2:
        print("Usage: xl [-vf] migrate <Domain> <host>", file=sys.stderr)
        return 2
    name, host = rest
    if name not in state:
        return _no_domain(name)
    peers = os.environ.get("FAKE_XL_PEERS")
    if not peers:
        print(f"ssh: Could not resolve hostname {host}: Name or service not known\n"
              "migration sender: Target has no xl migrate-receive (ssh failed)", file=sys.stderr)
        return 1
    print("migration target: Ready to receive domain.\nSaving to migration stream new xl format "
          "(info 0x3/0x0/1309)\nLoading new save file <incoming migration stream> (new xl fmt info "
          "0x3/0x0/1309)", file=sys.stderr)
    peer = os.path.join(peers, host)
    os.makedirs(peer, exist_ok=True)
    peer_state_file = os.path.join(peer, "domains.json")
    with open(peer_state_file + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(os.path.join(peer, "calls.jsonl"), "a") as f:
            f.write(json.dumps({"argv": ["migrate-receive"], "cwd": "/"}) + "\n")
        if os.environ.get("FAKE_XL_FAIL_MIGRATE"):
            print("libxl: error: libxl_stream_read.c:850:libxl__xc_domain_restore_done: restoring domain: "
                  "Cannot allocate memory\nmigration target: Domain creation failed (code -3).\n"
                  "migration sender: Target reported failure\nMigration failed, resuming at sender.",
                  file=sys.stderr)
            return 1
        peer_state = _load(peer_state_file)
        if _receive(peer_state, name, bool(opts.get("-p"))):
            print("migration sender: Target reported failure\nMigration failed, resuming at sender.",
                  file=sys.stderr)
            return 1
        _save(peer_state_file, peer_state)
    print("migration sender: Target reports successful startup.\nMigration successful.", file=sys.stderr)
    del state[name]
    return 0


def main(argv: list[str]) -> int:
    # mln starts hosts in parallel: one call at a time, like xl's own lock
    with open(os.environ["FAKE_XL_STATE"] + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _main(argv)


def _main(argv: list[str]) -> int:
    log, state_file = os.environ["FAKE_XL_LOG"], os.environ["FAKE_XL_STATE"]
    with open(log, "a") as f:
        f.write(json.dumps({"argv": argv, "cwd": os.getcwd()}) + "\n")
    state = _load(state_file)
    if not argv:
        print("Usage xl [-vfNtT] <subcommand> [args]", file=sys.stderr)
        return 1
    cmd, args = argv[0], [a for a in argv[1:] if not a.startswith("-")]
    if cmd == "create":
        if not args or not os.path.isfile(args[0]):
            print(f"Failed to read config file: {args[0] if args else ''}: No such file or directory",
                  file=sys.stderr)
            return 1
        with open(args[0]) as f:
            m = re.search(r'^name\s*=\s*"([^"]+)"', f.read(), re.M)
        if not m:
            print("Domain name must be specified.", file=sys.stderr)
            return 1
        if m.group(1) in state:
            print(f"domain with name {m.group(1)} already exists", file=sys.stderr)
            return 1
        state[m.group(1)] = "-b----"
    elif cmd == "list":
        if not args:
            _table(state)
            return 0
        if args[0] not in state:
            return _no_domain(args[0])
        _table({args[0]: state[args[0]]})
        return 0
    elif cmd in ("shutdown", "destroy"):
        if not args or args[0] not in state:
            return _no_domain(args[0] if args else "")
        if cmd == "shutdown" and os.environ.get("FAKE_XL_SLOW_SHUTDOWN"):
            state[args[0]] = "--s---"
        else:
            del state[args[0]]
    elif cmd == "save":
        if len(args) < 2 or args[0] not in state:
            return _no_domain(args[0] if args else "")
        with open(args[1], "w") as f:
            if os.environ.get("FAKE_XL_FAIL_SAVE"):
                f.write(f"{SAVE_MAGIC}\n")
                print("libxl: error: libxl_stream_write.c:350:libxl__xc_domain_save_done: saving domain: "
                      "domain responded to suspend request: No space left on device", file=sys.stderr)
                return 1
            f.write(f"{SAVE_MAGIC}\n{args[0]}\n")
        del state[args[0]]
    elif cmd == "restore":
        try:
            with open(args[-1] if args else "") as f:
                magic, _, name = f.read().partition("\n")
        except OSError as e:
            print(f"xl: cannot open restore file {args[-1] if args else ''}: {e.strerror}", file=sys.stderr)
            return 1
        if magic != SAVE_MAGIC or not name.strip():
            print("File has wrong magic number - corrupt or for a different tool?", file=sys.stderr)
            return 1
        if name.strip() in state:
            print(f"domain with name {name.strip()} already exists", file=sys.stderr)
            return 1
        state[name.strip()] = "-b----"
    elif cmd == "migrate":
        rc = _migrate(argv[1:], state)
        if rc:
            return rc
    elif cmd == "migrate-receive":
        stream = json.loads(sys.stdin.readline() or "{}")
        rc = _receive(state, stream.get("name", ""), bool(stream.get("paused")))
        if rc:
            return rc
    elif cmd == "unpause":
        if not args or args[0] not in state:
            return _no_domain(args[0] if args else "")
        state[args[0]] = "-b----"
    elif cmd == "info":
        print(f"host                   : fake\nxen_version            : 4.17.0\n"
              f"total_memory           : 131072\n"
              f"free_memory            : {os.environ.get('FAKE_XL_FREE_MEMORY', '65536')}")
        return 0
    else:
        print(f"fake_xl: '{cmd}' is not imitated", file=sys.stderr)
        return 2
    _save(state_file, state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
