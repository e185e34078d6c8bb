"""Guest individualization (spec 7.6): what makes each copy of a template itself.

For Debian, Red Hat and busybox guests (the family is detected from the image): the
hostname, network interfaces (static or DHCP, netmask, broadcast, gateway, MAC),
``/etc/hosts`` with the project's static addresses, ``/etc/fstab`` for the backend's
devices, ``nameserver``, ``users`` and ``groups``, ``root_passwd``, ``startup`` and
``shutdown`` scripts, ``files {}`` from the files directory and ``modules``.

Busybox guests also get mln's channel agent (``/usr/sbin/mln-channel``, started in the
background by rcS): it talks to mln through the virtio-serial port ``org.mln.channel``
that QEMU guests have (see mln_backends.qemu_live) and sets up a NIC hot-plugged into
the running guest: ``ifup MAC NAME [ADDRESS/PREFIX [GATEWAY]]`` waits for the NIC with
that MAC, renames it to NAME, sets the address and brings it up, and answers ``ok NAME``
or ``error NAME WHY``; ``ping`` answers ``pong``. Without virtio-serial (UML, say) it
ends at once, without such a port after 30 s.

Every edit is idempotent: files are rewritten whole, or mln's own marked section of a
shared file (``# >>> mln NAME >>>`` ... ``# <<< mln NAME <<<``) is replaced. Passwords:
a crypt hash is installed as it is; a clear-text password is hashed with SHA-512 crypt
(with a salt derived from the host, so that a rebuild gives the same file) and the
clear text is written nowhere. A value taken as a hash (``CRYPT``) that is no valid one
of its scheme (``VALID_HASH``: a ``$6$`` with a short hash, 13 characters that cannot be
a DES hash) is warned about by ``mln check`` at its place, without showing it. A
``slirp`` interface without an address gets slirp's 10.0.2.15/24 via 10.0.2.2, and
resolv.conf slirp's DNS 10.0.2.3 after ``nameserver`` (``mln_core.nickinds``).
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import replace

from mln_core import hookimpl, nickinds
from mln_core.errors import MlnError, Problem
from mln_core.guest import set_section  # noqa: F401  (also this module's name for it)
from mln_core.limits import MAX_UID, octal_mode, whole_number
from mln_core.machine import local
from mln_core.names import inner_path_problem, inside

CRYPT = re.compile(r"(\$(1|2[abxy]|5|6|7|y|gy)\$.+|[./0-9A-Za-z]{13}|[*!].*)\Z")
_B64 = "[./0-9A-Za-z]"
#: What crypt(5) accepts for each scheme CRYPT takes (a locked ``*``/``!`` one is anything).
VALID_HASH = re.compile("(?:" + "|".join((
    rf"\$1\${_B64}{{0,8}}\${_B64}{{22}}",                        # MD5
    rf"\$5\$(rounds=[0-9]+\$)?{_B64}{{0,16}}\${_B64}{{43}}",      # SHA-256
    rf"\$6\$(rounds=[0-9]+\$)?{_B64}{{0,16}}\${_B64}{{86}}",      # SHA-512
    rf"\$2[abxy]\$(0[4-9]|[12][0-9]|3[01])\${_B64}{{53}}",       # bcrypt
    rf"\$g?y\${_B64}+\${_B64}*\${_B64}{{43}}",                     # yescrypt, gost-yescrypt
    rf"\$7\${_B64}{{11}}[^$]*\${_B64}{{43}}",                     # scrypt
    rf"{_B64}{{12}}[.26AEIMQUYcgkosw]",                        # DES: 64 bits in 11 characters
    r"[*!].*",                                                 # a locked account
)) + r")\Z", re.S)
SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LINUX = ("debian", "redhat", "busybox", "suse")


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

def password_hash(password: str, salt_seed: str, machine=None) -> str:
    """A crypt hash as it is; anything else hashed with SHA-512 crypt and a stable salt, by
    ``openssl passwd`` on ``machine`` (this machine when None is given). The password goes
    to its standard input, never on a command line."""
    if CRYPT.match(password):
        return password
    import hashlib      # here, not at the top: every mln command imports this plugin
    digest = hashlib.sha256(f"{salt_seed}\0{password}".encode()).digest()
    salt = "".join(SALT_CHARS[b % 64] for b in digest[:16])
    machine = machine if machine is not None else local()
    try:
        r = machine.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password.encode())
    except MlnError as e:
        raise MlnError(f"cannot hash a password (openssl passwd): {e.message}") from None
    return r.stdout.decode().strip()


def _in_guest(*parts: str) -> str:
    """An absolute path inside the guest, named from its parts: the guest's own kernel
    filesystems that its scripts and fstab refer to (never this machine's)."""
    return posixpath.join("/", *parts)


def _table(guest, path: str) -> list[list[str]]:
    text = guest.read_text(path) or ""
    return [line.split(":") for line in text.splitlines() if line.strip()]


def _write_table(guest, path: str, rows: list[list[str]], mode: int) -> None:
    guest.write_text(path, "".join(":".join(r) + "\n" for r in rows), mode)


def _ids(rows: list[list[str]]) -> set[int]:
    """The ids (third field) of /etc/passwd or /etc/group rows that have a valid one."""
    return {n for r in rows if len(r) > 2 for n in [whole_number(r[2], 0, MAX_UID)] if n is not None}


def _free_id(used: set[int], start: int = 1000) -> int:
    n = start
    while n in used:
        n += 1
    return n


# ---------------------------------------------------------------------------------------
# the hook
# ---------------------------------------------------------------------------------------

@hookimpl
def mln_validate(project, ctx):
    """A password taken as a crypt hash that is no valid one: nobody could log in with it."""
    out = []
    for host in project.hosts.values():
        tree = host.tree
        if tree is None:
            continue
        line = tree.line("root_passwd") or tree.line("root_password")
        if line is not None and host.root_passwd and _bad_hash(host.root_passwd):
            out.append(Problem("warning", f"host {host.name}: the root password {_bad_hash(host.root_passwd)}",
                               line.pos))
        users = tree.block("users")
        for ln in users.lines if users is not None else ():
            if len(ln.words) > 1 and _bad_hash(ln.words[1]):
                out.append(Problem("warning", f"host {host.name}: the password of user {ln.words[0]} "
                                              f"{_bad_hash(ln.words[1])}", ln.pos))
    return out


def _bad_hash(password: str) -> str | None:
    """Why ``password`` is taken as a crypt hash but is not a valid one (never showing it)."""
    if not CRYPT.match(password) or VALID_HASH.match(password):
        return None
    if password.startswith("$"):
        scheme = password.split("$")[1]
        return (f"looks like a ${scheme}$ crypt hash, so it is installed as it is, but it is not a valid "
                "one: nobody could log in with it. Write the password itself, or a hash made by "
                "'openssl passwd -6'")
    return ("is 13 letters, digits, '.' and '/', so it is installed as a DES crypt hash, but it is not a "
            "valid one: nobody could log in with it. Write a longer password, or a hash made by "
            "'openssl passwd -6'")


@hookimpl(tryfirst=True)
def mln_configure_image(host, guest, ctx):
    family = getattr(guest, "family", None)
    if family not in LINUX:
        if family == "windows":
            ctx.debug(f"host {host.name}: a Windows image gets no Linux individualization")
        return
    devices = ctx.pm.hook.mln_guest_devices(host=host, ctx=ctx) or {}
    shell = "/bin/bash" if guest.exists("/bin/bash") else "/bin/sh"
    guest.write_text("/etc/hostname", host.name + "\n")
    net_host = replace(host, interfaces=[nickinds.effective(i) for i in host.interfaces])
    if family == "redhat":
        net = guest.read_text("/etc/sysconfig/network") or "NETWORKING=yes\n"
        net = "".join(line + "\n" for line in net.splitlines()
                      if not line.startswith(("HOSTNAME=", "GATEWAY=")))
        net += f"HOSTNAME={host.name}\n"
        gw = next((i.gateway for i in net_host.interfaces if i.gateway), None)
        if gw:
            net += f"GATEWAY={gw}\n"
        guest.write_text("/etc/sysconfig/network", net)
    _users(host, guest, shell, ctx.on(host))
    _groups(host, guest)
    _nic_renames(guest, family, devices.get("nic_renames") or {})
    if host.interfaces:
        {"debian": _net_debian, "suse": _net_debian, "redhat": _net_redhat,
         "busybox": _net_busybox}[family](net_host, guest, _mtus(host, ctx))
        _hosts_file(host, guest, ctx)
    _fstab(host, guest, devices)
    dns = [host.nameserver] * bool(host.nameserver) + [nickinds.SLIRP_DNS] * _slirp(host)
    if dns:
        guest.write_text("/etc/resolv.conf", "".join(f"nameserver {a}\n" for a in dns))
    _files(host, guest, ctx)
    _modules(host, guest, family)
    _channel_agent(guest, family)
    _scripts(host, guest, family)
    if host.root_passwd:
        _set_password(guest, "root", password_hash(host.root_passwd, f"{host.fqname}/root", ctx.on(host)))


# -- users and groups ----------------------------------------------------------------------

def _set_password(guest, user: str, hashed: str) -> None:
    rows = _table(guest, "/etc/shadow")
    for r in rows:
        if r[0] == user:
            r[1:2] = [hashed]
            break
    else:
        rows.append([user, hashed, "19000", "0", "99999", "7", "", "", ""])
    _write_table(guest, "/etc/shadow", rows, 0o640 if guest.exists("/etc/gshadow") else 0o600)


def _users(host, guest, shell: str, machine) -> None:
    if not host.users:
        return
    passwd = _table(guest, "/etc/passwd")
    group = _table(guest, "/etc/group")
    for u in host.users:
        existing = next((r for r in passwd if r[0] == u.name), None)
        if existing is None:
            uids = _ids(passwd)
            gids = _ids(group)
            uid = u.uid if u.uid is not None else _free_id(uids | gids)
            gid = uid if uid not in gids else _free_id(gids)
            home = u.home or f"/home/{u.name}"
            passwd.append([u.name, "x", str(uid), str(gid), "", home, shell])
            if not any(r[0] == u.name for r in group):
                group.append([u.name, "x", str(gid), ""])
        else:
            uid = whole_number(existing[2], 0, MAX_UID) if len(existing) > 2 else None
            gid = whole_number(existing[3], 0, MAX_UID) if len(existing) > 3 else None
            if uid is None or gid is None or len(existing) < 6:
                raise MlnError(f"host {host.name}: the guest's /etc/passwd line of {u.name} is damaged")
            home = existing[5]
            if u.home and u.home != home:
                existing[5] = home = u.home
        guest.mkdir(home, 0o755, uid, gid)
        _set_password(guest, u.name, password_hash(u.password, f"{host.fqname}/{u.name}", machine)
                      if u.password else "!")
    _write_table(guest, "/etc/passwd", passwd, 0o644)
    _write_table(guest, "/etc/group", group, 0o644)


def _groups(host, guest) -> None:
    if not host.groups:
        return
    group = _table(guest, "/etc/group")
    gids = _ids(group)
    for name, members in host.groups.items():
        row = next((r for r in group if r[0] == name), None)
        if row is None:
            gid = _free_id(gids)
            gids.add(gid)
            row = [name, "x", str(gid), ""]
            group.append(row)
        have = [m for m in row[3].split(",") if m] if len(row) > 3 else []
        row[3:] = [",".join(have + [m for m in members if m not in have])]
    _write_table(guest, "/etc/group", group, 0o644)


# -- network ----------------------------------------------------------------------------------

def _mtus(host, ctx) -> dict[str, int]:
    """The MTU of each interface on a switch that spans servers (inside the VXLAN's)."""
    out = {}
    for i in host.interfaces:
        switch = ctx.project.switches.get(i.switch) if i.switch and ctx.project is not None else None
        span = ctx.span(switch) if switch is not None else None
        if span:
            out[i.name] = span["mtu"]
    return out


def _net_debian(host, guest, mtus: dict) -> None:
    out = ["auto lo", "iface lo inet loopback", ""]
    for i in host.interfaces:
        if (i.tree.get("auto") or "").lower() not in ("no", "0", "false"):
            out.append(f"auto {i.name}")
        if i.dhcp:
            out.append(f"iface {i.name} inet dhcp")
            if i.mac:
                out.append(f"    hwaddress ether {i.mac}")
        elif i.address:
            out.append(f"iface {i.name} inet static")
            out.append(f"    address {i.address}")
            for key in ("netmask", "broadcast", "gateway"):
                if getattr(i, key):
                    out.append(f"    {key} {getattr(i, key)}")
            if i.mac:
                out.append(f"    hwaddress ether {i.mac}")
        else:
            out.append(f"iface {i.name} inet manual")
        if i.name in mtus:
            out.append(f"    mtu {mtus[i.name]}")
        out.append("")
    guest.write_text("/etc/network/interfaces", "\n".join(out))
    macs = [f"{i.name} mac {i.mac}" for i in host.interfaces if i.mac]
    if macs:
        guest.write_text("/etc/iftab", "\n".join(macs) + "\n")
    else:
        guest.remove("/etc/iftab")


def _nic_renames(guest, family: str, renames: dict) -> None:
    """Give the guest's NICs the project's names where the hypervisor names them otherwise
    (UML's vector driver: vec0 for eth0): a udev rule, or for busybox a step of rcS that
    runs before the network section."""
    if family == "busybox":
        body = "\n".join(f"[ -e {_in_guest('sys', 'class', 'net', old)} ] && ip link set dev {old} name {new}"
                         for old, new in sorted(renames.items())) or None
        rcs = guest.read_text("/etc/init.d/rcS") or "#!/bin/sh\n"
        rcs = set_section(rcs, "nic-names", None)
        if body:           # before mln's other sections, which use the names
            marker = "# >>> mln "
            at = rcs.find(marker)
            section = set_section("", "nic-names", body)
            rcs = rcs[:at] + section + rcs[at:] if at >= 0 else rcs + section
        guest.write_text("/etc/init.d/rcS", rcs, 0o755)
        return
    rule = "/etc/udev/rules.d/60-mln-nic-names.rules"
    if renames:
        guest.write_text(rule, "# written by mln: NIC names of the project file\n" + "".join(
            f'SUBSYSTEM=="net", ACTION=="add", KERNEL=="{old}", NAME="{new}"\n'
            for old, new in sorted(renames.items())))
    else:
        guest.remove(rule)


def _net_redhat(host, guest, mtus: dict) -> None:
    for i in host.interfaces:
        lines = [f"DEVICE={i.name}", f"BOOTPROTO={'dhcp' if i.dhcp else 'none'}",
                 "ONBOOT=yes", "USERCTL=no", "TYPE=Ethernet"]
        if i.address and not i.dhcp:
            lines.append(f"IPADDR={i.address}")
            if i.netmask:
                lines.append(f"NETMASK={i.netmask}")
            if i.broadcast:
                lines.append(f"BROADCAST={i.broadcast}")
        if i.mac:
            lines.append(f"HWADDR={i.mac}")
        if i.name in mtus:
            lines.append(f"MTU={mtus[i.name]}")
        guest.write_text(f"/etc/sysconfig/network-scripts/ifcfg-{i.name}", "\n".join(lines) + "\n")


def _net_busybox(host, guest, mtus: dict) -> None:
    cmds = []
    gateway = None
    for i in host.interfaces:
        if i.mac:
            cmds.append(f"ifconfig {i.name} hw ether {i.mac}")
        if i.name in mtus:
            cmds.append(f"ifconfig {i.name} mtu {mtus[i.name]}")
        if i.dhcp:
            cmds.append(f"udhcpc -b -q -i {i.name}")
        elif i.address:
            args = f"ifconfig {i.name} {i.address}"
            if i.netmask:
                args += f" netmask {i.netmask}"
            if i.broadcast:
                args += f" broadcast {i.broadcast}"
            cmds.append(args + " up")
            gateway = gateway or i.gateway
        else:
            cmds.append(f"ifconfig {i.name} up")
    if gateway:
        cmds.append(f"route add default gw {gateway}")
    _rcs_section(guest, "network", "\n".join(cmds))


def _rcs_section(guest, name: str, body: str | None) -> None:
    rcs = guest.read_text("/etc/init.d/rcS")
    if rcs is None:
        rcs = "#!/bin/sh\n"
    guest.write_text("/etc/init.d/rcS", set_section(rcs, name, body), 0o755)


def _static_address_lines(project) -> list[str]:
    """``address name`` for every static address of the project (made once per project)."""
    cached = getattr(project, "_mln_static_hosts", None)
    if cached is None:
        cached = [f"{i.address}\t{h.name}" for h in project.hosts.values()
                  for i in h.interfaces if i.address and not i.dhcp and nickinds.kind(i) != "slirp"]
        project._mln_static_hosts = cached
    return cached


def _hosts_file(host, guest, ctx) -> None:
    lines = [f"127.0.0.1\tlocalhost {host.name}" if not _static(host) else "127.0.0.1\tlocalhost"]
    project = getattr(ctx, "project", None)
    if project is not None:
        lines += _static_address_lines(project)
    else:
        lines += [f"{i.address}\t{host.name}" for i in host.interfaces
                  if i.address and not i.dhcp and nickinds.kind(i) != "slirp"]
    lines += ["", "::1\tlocalhost ip6-localhost ip6-loopback", "ff02::1\tip6-allnodes",
              "ff02::2\tip6-allrouters"]
    guest.write_text("/etc/hosts", "\n".join(lines) + "\n")


def _static(host) -> bool:
    return any(i.address and not i.dhcp and nickinds.kind(i) != "slirp" for i in host.interfaces)


def _slirp(host) -> bool:
    return any(nickinds.kind(i) == "slirp" for i in host.interfaces)


# -- disks, files, modules, scripts ----------------------------------------------------------

def _fstab(host, guest, devices: dict) -> None:
    root = devices.get("root")
    if not root or (host.tree is not None and host.tree.has("hvm")):
        return
    fstype = devices.get("root_fstype", "ext4")
    lines = [f"{root}\t/\t{fstype}\tdefaults\t0\t1", f"proc\t{_in_guest('proc')}\tproc\tdefaults\t0\t0"]
    if host.swap and devices.get("swap"):
        lines.append(f"{devices['swap']}\tnone\tswap\tsw\t0\t0")
    extra = list(devices.get("extra", []))
    for n, m in enumerate(host.mounts):
        source = extra[n] if n < len(extra) else m.source
        if m.fstype == "hostfs":
            source = "none"
        lines.append(f"{source}\t{m.mountpoint}\t{m.fstype}\t{m.options or 'defaults'}\t0\t0")
        guest.mkdir(m.mountpoint)
    guest.write_text("/etc/fstab", "\n".join(lines) + "\n")


def _files(host, guest, ctx) -> None:
    """``files {}``: copy each source from the files directory. Nothing outside it reaches
    the guest: the source is a path inside it (checked by the model too), and a symbolic
    link that leads out of the source (to a host file, or to all of /etc) is skipped with
    a warning naming the host and the link."""
    if not host.files:
        return
    base = os.path.realpath(ctx.config.files_dir)
    for f in host.files:
        problem = inner_path_problem(f.source, "files source", "files directory")
        src = os.path.realpath(os.path.join(base, f.source))
        if problem or not inside(base, src):
            raise MlnError(f"files: '{f.source}' is outside the files directory {base}; refusing to copy it")
        if not os.path.exists(src):
            raise MlnError(f"files: '{f.source}' does not exist in the files directory {base}")
        dest = f.destination
        if guest.is_dir(dest) and not os.path.isdir(src):
            dest = dest.rstrip("/") + "/" + os.path.basename(src)
        mode = octal_mode(f.mode) if f.mode else None
        if f.mode and mode is None:
            raise MlnError(f"files: mode '{f.mode}' of '{f.source}' is not octal (such as 644)")
        _copy_in(src, guest, dest, mode, src, set(), lambda why: ctx.log(f"warning: host {host.name}: {why}"))


def _copy_in(src: str, guest, dest: str, mode: int | None, top: str, seen: set, warn) -> None:
    """Copy ``src`` (inside the source ``top``) into the guest as ``dest``. A symbolic link
    is followed only when it leads to a file or directory inside ``top``; a directory is
    copied once (a link back to a parent would loop)."""
    real = os.path.realpath(src)
    if os.path.islink(src) and not inside(top, real):
        warn(f"files: skipping '{src}': a symbolic link to {os.readlink(src)}, outside {top}")
        return
    if os.path.isdir(real):
        if real in seen:
            warn(f"files: skipping '{src}': a link to a directory that is copied already ({real})")
            return
        seen.add(real)
        guest.mkdir(dest, mode if mode is not None else 0o755)
        for name in sorted(os.listdir(real)):
            _copy_in(os.path.join(src, name), guest, dest.rstrip("/") + "/" + name, mode, top, seen, warn)
    elif os.path.isfile(real):
        guest.write_file(dest, real, mode)
    else:
        warn(f"files: skipping '{src}': not a regular file (a FIFO, socket or device)")


def _modules(host, guest, family: str) -> None:
    if not host.modules:
        return
    names = [w for line in host.modules for w in line.split()]
    if family == "busybox":
        _rcs_section(guest, "modules", "\n".join(f"modprobe {m}" for m in names))
    elif family == "redhat":
        rc = guest.read_text("/etc/rc.local") or "#!/bin/sh\n"
        guest.write_text("/etc/rc.local", set_section(rc, "modules", "\n".join(f"modprobe {m}" for m in names)),
                         0o755)
    else:
        mods = guest.read_text("/etc/modules") or ""
        guest.write_text("/etc/modules", set_section(mods, "modules", "\n".join(names)))


CHANNEL_AGENT = r"""#!/bin/sh
# mln's channel agent (written by mln, started by rcS): requests from mln on the
# virtio-serial port org.mln.channel, one per line, each answered with one line.
#   ifup MAC NAME [ADDRESS/PREFIX [GATEWAY]]  -> ok NAME | error NAME WHY
#   ping                                      -> pong
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
PORTS=@PORTS@
NET=@NET@
[ -d "$PORTS" ] || exit 0          # no virtio-serial driver: not a QEMU guest
port=
n=0
while [ -z "$port" ]; do
    for f in "$PORTS"/*/name; do
        [ -r "$f" ] && [ "$(cat "$f")" = org.mln.channel ] && port=/dev/$(basename "$(dirname "$f")")
    done
    [ -n "$port" ] && [ -c "$port" ] && break
    port=
    n=$((n + 1))
    [ $n -gt 30 ] && exit 0         # the guest has no mln channel
    sleep 1
done

nap() { usleep 200000 2>/dev/null || sleep 1; }

mac_dev() {
    for d in "$NET"/*; do
        [ "$(cat "$d/address" 2>/dev/null)" = "$1" ] && { echo "${d##*/}"; return 0; }
    done
    return 1
}

ifup_req() {
    mac=$1 name=$2 addr=$3 gw=$4
    if [ -z "$mac" ] || [ -z "$name" ]; then
        echo "error ${name:--} usage: ifup MAC NAME [ADDRESS/PREFIX [GATEWAY]]"; return
    fi
    n=0
    until dev=$(mac_dev "$mac"); do
        n=$((n + 1))
        [ $n -gt 100 ] && { echo "error $name no interface has the MAC address $mac"; return; }
        nap
    done
    if [ "$dev" != "$name" ]; then
        [ -e "$NET/$name" ] && { echo "error $name the name is taken by another interface"; return; }
        { ip link set dev "$dev" down && ip link set dev "$dev" name "$name"; } \
            || { echo "error $name cannot rename $dev to $name"; return; }
    fi
    case "$addr" in
        ''|-) ;;
        *:*) ip addr show dev "$name" | grep -q "inet6 $addr " || ip addr add "$addr" dev "$name" \
                 || { echo "error $name cannot set the address $addr"; return; } ;;
        *) ip addr show dev "$name" | grep -q "inet $addr " || ip addr add "$addr" brd + dev "$name" \
               || { echo "error $name cannot set the address $addr"; return; } ;;
    esac
    ip link set dev "$name" up || { echo "error $name cannot bring it up"; return; }
    if [ -n "$gw" ]; then
        ip route replace default via "$gw" || { echo "error $name cannot set the gateway $gw"; return; }
    fi
    echo "ok $name"
}

exec 3<>"$port" || exit 1
echo "mln-channel: listening on $port"
while true; do
    if read -r req a1 a2 a3 a4 rest <&3; then
        case "$req" in
            ifup) answer=$(ifup_req "$a1" "$a2" "$a3" "$a4" 2>&1 | tail -n 1) ;;
            ping) answer=pong ;;
            '') continue ;;
            *) answer="error $req unknown request" ;;
        esac
        echo "mln-channel: $req $a1 $a2 $a3 $a4: $answer"
        echo "$answer" >&3
    else
        sleep 1                     # nobody on the other side (read gives end of file)
    fi
done
"""


def _channel_agent(guest, family: str) -> None:
    """mln's channel agent (busybox guests), started by rcS before the startup lines (which
    may take long) and after the network set-up."""
    if family != "busybox":
        return
    agent = CHANNEL_AGENT.replace("@PORTS@", _in_guest("sys", "class", "virtio-ports"))
    guest.write_text("/usr/sbin/mln-channel", agent.replace("@NET@", _in_guest("sys", "class", "net")), 0o755)
    rcs = set_section(guest.read_text("/etc/init.d/rcS") or "#!/bin/sh\n", "channel", None)
    section = set_section("", "channel", "/usr/sbin/mln-channel &")
    at = rcs.find("# >>> mln startup >>>")
    rcs = rcs[:at] + section + rcs[at:] if at >= 0 else rcs + section
    guest.write_text("/etc/init.d/rcS", rcs, 0o755)


def _scripts(host, guest, family: str) -> None:
    if family == "busybox":
        _rcs_section(guest, "startup", "\n".join(host.startup) if host.startup else None)
        if host.shutdown:
            guest.write_text("/etc/init.d/shutdown", "#!/bin/sh\n" + "\n".join(host.shutdown) + "\n", 0o755)
            inittab = guest.read_text("/etc/inittab") or ""
            guest.write_text("/etc/inittab", set_section(inittab, "shutdown", "::shutdown:/etc/init.d/shutdown"))
        return
    runlevels = ("3", "4") if family == "redhat" else ("2", "3", "4", "5")
    for name, lines, link_dirs, prefix in (
            ("startup", host.startup, runlevels, "S99"),
            ("shutdown", host.shutdown, ("0", "6"), "K01")):
        if not lines:
            continue
        script = ["#!/bin/bash", "### BEGIN INIT INFO", f"# Provides: mln-{name}",
                  "# Required-Start: $all", "# Default-Start: 2 3 4 5" if name == "startup" else
                  "# Default-Stop: 0 6", f"# Short-Description: the {name} lines of the mln project file",
                  "### END INIT INFO", f'echo "mln: running the {name} script"', *lines]
        guest.write_text(f"/etc/init.d/mln-{name}", "\n".join(script) + "\n", 0o755)
        for rl in link_dirs:
            guest.symlink(f"../init.d/mln-{name}", f"/etc/rc{rl}.d/{prefix}mln-{name}")
        if guest.is_dir("/etc/systemd/system"):
            target = "multi-user.target"
            unit = ["[Unit]", f"Description=mln {name} lines", "After=network-online.target",
                    "", "[Service]", "Type=oneshot", "RemainAfterExit=yes"]
            unit += [f"ExecStart=/etc/init.d/mln-{name}"] if name == "startup" else \
                ["ExecStart=/bin/true", f"ExecStop=/etc/init.d/mln-{name}"]
            unit += ["StandardOutput=journal+console", "", "[Install]", f"WantedBy={target}"]
            guest.write_text(f"/etc/systemd/system/mln-{name}.service", "\n".join(unit) + "\n")
            guest.symlink(f"/etc/systemd/system/mln-{name}.service",
                          f"/etc/systemd/system/{target}.wants/mln-{name}.service")
