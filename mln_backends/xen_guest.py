"""The guest image edits of a Xen PV guest: a console on hvc0 and the names of its vifs.

Not a plugin: the ``xen`` backend calls :func:`configure` from its ``mln_configure_image``
for Linux PV guests with sysvinit or systemd (busybox guests run their console shell on
/dev/console, which is hvc0, and HVM guests have an emulated serial console).

* A getty on ``hvc0`` in ``/etc/inittab`` (an existing hvc0 line is replaced; systemd
  guests get one from systemd's getty generator), and ``hvc0`` in ``/etc/securetty``
  when that file exists, both in mln's marked section ``xen-console``.
* A guest whose interfaces have a gap (eth0 and eth2) would call its second vif eth1: a
  udev rule per MAC (:data:`NET_RULES`) gives it its configured name.
"""
from __future__ import annotations

from mln_core.guest import set_section

from .xen_config import vif_mac

SECTION = "xen-console"
NET_RULES = "/etc/udev/rules.d/70-mln-xen-net.rules"


def getty(guest) -> str:
    """The getty command line for hvc0, from the gettys the guest has."""
    for path, args in (("/sbin/getty", "38400 hvc0"), ("/sbin/agetty", "38400 hvc0 vt100"),
                       ("/sbin/mingetty", "hvc0")):
        if guest.exists(path):
            return f"{path} {args}"
    return "/sbin/getty 38400 hvc0"


def xen_inittab(text: str, getty_line: str) -> str:
    """``text`` with mln's hvc0 getty at the end; other lines running a getty on hvc0 go."""
    lines = set_section(text, SECTION, None).splitlines()

    def runs_on_hvc0(line: str) -> bool:
        fields = line.split(":", 3)
        return len(fields) == 4 and not line.lstrip().startswith("#") and "hvc0" in fields[3].split()

    kept = [line for line in lines if not runs_on_hvc0(line)]
    return set_section("".join(line + "\n" for line in kept), SECTION, f"hvc:2345:respawn:{getty_line}")


def configure(host, guest, family: str) -> None:
    """The console on hvc0 and the vif names, in the guest image of a Linux PV guest."""
    inittab = guest.read_text("/etc/inittab")
    if inittab is not None:
        new = xen_inittab(inittab, getty(guest))
        if new != inittab:
            guest.write_text("/etc/inittab", new)
    securetty = guest.read_text("/etc/securetty")
    if securetty is not None:
        outside = set_section(securetty, SECTION, None)
        new = set_section(securetty, SECTION, None if "hvc0" in outside.split() else "hvc0")
        if new != securetty:
            guest.write_text("/etc/securetty", new, 0o600 if family == "redhat" else 0o644)
    interface_names(host, guest)


def interface_names(host, guest) -> None:
    """The guest names its vifs eth0, eth1... in list order; when the project file leaves a
    gap (eth0 and eth2), a udev rule per MAC gives each interface the name it was configured
    under."""
    indices = [i.index for i in sorted(host.interfaces, key=lambda i: i.index)]
    if indices == list(range(len(indices))):
        guest.remove(NET_RULES)
        return
    lines = ["# Written by mln: this Xen guest's interfaces are not numbered from eth0 without gaps,",
             "# so each vif is named after its MAC as in the project file."]
    lines += [f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{vif_mac(host, i)}", NAME="{i.name}"'
              for i in sorted(host.interfaces, key=lambda i: i.index)]
    guest.write_text(NET_RULES, "\n".join(lines) + "\n")
