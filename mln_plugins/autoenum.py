"""autoenum: generate numbered hosts from a superclass (spec 5.4).

    global {
        project vcluster
        autoenum {
            superclass cluster-node   # each host inherits from it
            numhosts 36               # node01 ... node36 (zero-padded to the width of 36)
            hostprefix node           # default "node"
            address auto              # eth0 address = net + addresses_begin + i - 1
            net 10.0.0.0              # a network address; /24 unless a prefix is given
            addresses_begin 10
            autouser $1$hash...       # a user named like each host, with this password hash
            service_hosts {           # spread the hosts over servers, in order:
                server1 12            #   12 hosts, then
                server2 all           #   all the rest (a bare name takes one host)
            }
        }
    }

Further independent groups go in ``autoenum0`` ... ``autoenum5``. A host written out
explicitly with a generated name keeps its own settings; autoenum only adds what it
does not set.
"""
from __future__ import annotations

import ipaddress
import re

from mln_core import hookimpl
from mln_core.lang.tree import ESC_DOLLAR
from mln_core.lang.variables import unescape
from mln_core.limits import MAX_HOSTS, whole_number
from mln_core.names import name_problem

_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")  # the parser's rule for host names
GROUPS = ("autoenum",) + tuple(f"autoenum{i}" for i in range(6))
KEYWORDS = {
    "superclass": "superclass every generated host inherits from",
    "numhosts": "how many hosts to generate",
    "hostprefix": "host name prefix (default node)",
    "address": "'auto' gives each host an eth0 address from net",
    "net": "network the addresses come from, e.g. 10.0.0.0 or 10.0.0.0/16",
    "addresses_begin": "offset of the first address in net (default 1)",
    "autouser": "password hash of a user named like each host",
}


@hookimpl
def mln_register_keywords(registry):
    for group in GROUPS:
        registry.block("global", group, "keywords", "generate numbered hosts (autoenum plugin)")
        for name, text in KEYWORDS.items():
            registry.keyword(f"global.{group}", name, text, secret=name == "autouser")
        registry.block(f"global.{group}", "service_hosts", "lines",
                       "servers for the generated hosts: 'name count', 'name all' or 'name'")


@hookimpl
def mln_post_parse(doc, ctx):
    g = doc.global_block
    if g is None:
        return
    for group in GROUPS:
        block = g.blocks.get(group)
        if block is not None:
            _expand(doc, block)


def _value(doc, block, key):
    line = block.line(key)
    if line is None:
        return None, None
    return unescape(doc.resolve_global(line.value, line.pos)), line


def _expand(doc, block) -> None:
    problems = doc.problems
    origin = block.kind
    text, line = _value(doc, block, "numhosts")
    if line is None:
        problems.error(f"{block.kind}: 'numhosts N' is missing", block.pos)
        return
    count = whole_number(text, 1)
    if count is None:
        problems.error(f"{block.kind}: numhosts must be a whole number of at least 1, not '{text[:40]}'",
                       line.pos)
        return
    if count + len(doc.hosts()) > MAX_HOSTS:      # before a single host is made
        problems.error(f"{block.kind}: numhosts {count} would make more than {MAX_HOSTS:,} hosts in the "
                       f"project (the limit; {len(doc.hosts()):,} exist already)", line.pos)
        return
    numhosts_pos = line.pos
    prefix, prefix_line = _value(doc, block, "hostprefix")
    prefix = prefix if prefix not in (None, "", "1") else "node"
    if not _HOST_NAME.match(f"{prefix}1"):
        problems.error(f"{block.kind}: bad hostprefix '{prefix[:40]}': host names are letters, digits, "
                       "'-' and '_' (starting with a letter or digit)", prefix_line.pos)
        return
    width = len(str(count))
    too_long = name_problem("host", f"{prefix}{count}")
    if too_long:
        problems.error(f"{block.kind}: hostprefix: {too_long}", prefix_line.pos)
        return
    superclass, sc_line = _value(doc, block, "superclass")
    if superclass is not None and superclass not in doc.superclasses():
        known = ", ".join(sorted(doc.superclasses())) or "none are defined"
        problems.error(f"{block.kind}: unknown superclass '{superclass}' (known: {known})", sc_line.pos)
        return

    addresses = None
    mode, addr_line = _value(doc, block, "address")
    if mode is not None:
        if mode != "auto":
            problems.error(f"{block.kind}: the only address mode is 'auto', not '{mode}'", addr_line.pos)
            return
        addresses = _addresses(doc, block, count, problems)
        if addresses is None:
            return

    servers = _service_hosts(block, count, problems)
    if servers is None:
        return
    autouser, au_line = _value(doc, block, "autouser")
    if autouser is not None:     # one word, as written: white space kept, every '$' literal
        autouser = autouser.replace("$", ESC_DOLLAR)

    for i in range(1, count + 1):
        name = f"{prefix}{i:0{width}d}"
        host = doc.root.child("host", name, pos=numhosts_pos, origin=origin)
        if superclass is not None and host.line("superclass") is None:
            host.add_line(["superclass", superclass], sc_line.pos, origin)
        if servers[i - 1] is not None and host.line("service_host") is None:
            server, pos = servers[i - 1]
            host.add_line(["service_host", server], pos, origin)
        if addresses is not None:
            eth0 = host.child("network", "eth0", pos=addr_line.pos, origin=origin)
            if eth0.line("address") is None:
                eth0.add_line(["address", addresses[i - 1]], addr_line.pos, origin)
        if autouser is not None:
            users = host.child("users", pos=au_line.pos, origin=origin)
            if not any(ln.words[0] == name for ln in users.lines):
                users.add_line([name, autouser], au_line.pos, origin)


def _addresses(doc, block, count, problems):
    net_text, net_line = _value(doc, block, "net")
    if net_line is None:
        problems.error(f"{block.kind}: 'address auto' needs 'net', e.g. net 10.0.0.0", block.pos)
        return None
    try:
        net = ipaddress.IPv4Network(net_text if "/" in net_text else f"{net_text}/24", strict=False)
    except ValueError:
        problems.error(f"{block.kind}: bad net '{net_text}'", net_line.pos)
        return None
    begin_text, begin_line = _value(doc, block, "addresses_begin")
    begin = 1
    if begin_line is not None:
        begin = whole_number(begin_text, 0, 2**32)
        if begin is None:
            problems.error(f"{block.kind}: addresses_begin must be a number, not '{begin_text[:40]}'",
                           begin_line.pos)
            return None
    first = int(net.network_address) + begin
    last = first + count - 1
    if begin < 1 or last >= int(net.broadcast_address):
        room = max(0, int(net.broadcast_address) - first)
        problems.error(f"{block.kind}: {count} hosts from address {ipaddress.IPv4Address(first)} do not "
                       f"fit in {net} (room for {room})", (begin_line or net_line).pos)
        return None
    return [str(ipaddress.IPv4Address(first + k)) for k in range(count)]


def _service_hosts(block, count, problems):
    """[(server, pos) or None] per host, in order."""
    sh = block.block("service_hosts")
    if sh is None:
        return [None] * count
    out = []
    for line in sh.lines:
        w = line.words
        if len(w) > 2:
            problems.error("a service_hosts line is 'server', 'server COUNT' or 'server all'", line.pos)
            return None
        n = 1
        if len(w) == 2:
            if w[1] == "all":
                n = count - len(out)
            elif whole_number(w[1], 0, MAX_HOSTS) is not None:
                n = min(whole_number(w[1]), count - len(out))
            else:
                problems.error(f"service host count must be a number or 'all', not '{w[1]}'", line.pos)
                return None
        out.extend([(w[0], line.pos)] * n)
    if len(out) < count:
        problems.warn(f"{block.kind}: service_hosts places {len(out)} of {count} hosts; the rest run "
                      "on the managing server", sh.pos)
    return (out + [None] * count)[:count]
