"""``mln daemon``, ``mln daemon_ca`` and ``mln daemon_status`` (spec 6.1, 6.5; see
:mod:`mln_core.daemon` and docs/servers.md).

Registered on the ``cli`` group by the import at the bottom of :mod:`mln_core.cli`.
"""
from __future__ import annotations

import os
import re
import sys
import threading

import click

from . import cli as _CLI
from .errors import MlnError


@click.command("daemon")
@click.option("-D", "pidfile", metavar="PIDFILE", type=click.Path(dir_okay=False),
              help="Detach and write the daemon's pid to PIDFILE (without it: stay in the foreground).")
@click.option("--listen", metavar="ADDR", help="The address to listen on (daemon_listen; default all).")
@click.option("-p", "--port", type=click.IntRange(1, 65535), metavar="PORT",
              help="The port (daemon_port; default 34001).")
@click.option("--log", "log_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Append the log to FILE (default: standard error; with -D /var/log/mln-daemon.log).")
@click.option("--grace", type=click.FloatRange(0, 86400), default=60, show_default=True, metavar="SECONDS",
              help="After SIGTERM, how long running requests may take before they are interrupted.")
@click.pass_context
def daemon(click_ctx, pidfile, listen, port, log_path, grace):
    """Serve this server's part of projects to other servers' mln, over TLS.

    Every client must come from an address of daemon_allow and authenticate with a client
    certificate signed by daemon_ca, or with the token of daemon_token_file. Each request
    runs as its own 'mln serve'. SIGTERM stops it: running requests finish first.
    """
    from .daemon import run_daemon, settings
    ctx = _CLI.get_ctx(click_ctx)
    obj = click_ctx.find_root().obj
    child = []
    for opt, key in (("-P", "projects"), ("-T", "templates"), ("-F", "files")):
        if obj.get(key):
            child += [opt, os.path.abspath(obj[key])]
    for name in sorted(obj.get("disabled") or ()):
        child += ["--no-plugin", name]
    s = settings(ctx.config, listen, port, child, grace)
    sys.exit(run_daemon(s, pidfile, log_path))


@click.group("daemon_ca")
def daemon_ca():
    """Make a site CA and the certificates of daemons and clients."""


@daemon_ca.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--days", type=click.IntRange(1, 36500), default=3650, show_default=True)
def ca_init(directory, days):
    """Create a CA in DIRECTORY (ca.crt, ca.key with mode 0600)."""
    from .daemon_ca import init_ca
    for p in init_ca(directory, days):
        click.echo(p)


@daemon_ca.command("issue")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("name")
@click.option("--client", is_flag=True, help="A client certificate (default: a daemon's).")
@click.option("-a", "--address", "addresses", multiple=True, metavar="ADDR",
              help="An IP address or DNS name the daemon is reached by (repeatable).")
@click.option("--days", type=click.IntRange(1, 36500), default=825, show_default=True)
def ca_issue(directory, name, client, addresses, days):
    """Issue NAME.crt and NAME.key (0600) in DIRECTORY, signed by its CA."""
    from .daemon_ca import issue
    for p in issue(directory, name, client, addresses, days):
        click.echo(p)


def _targets(config) -> dict:
    """The servers to ask: daemon_status_query entries (a server's name or ADDRESS[:PORT],
    asked through the daemon transport), else every ``server`` line."""
    from .servers import Server, configured
    known = configured(config)
    queries = config.getlist("daemon_status_query")
    if not queries:
        return known
    out = {}
    for q in queries:
        if q in known:
            out[q] = known[q]
            continue
        m = re.match(r"\[(.+)\]:(\d+)\Z|([^:\s]+):(\d+)\Z|([^\s]+)\Z", q)
        if not m:
            raise MlnError(f"daemon_status_query '{q}' is not a server name or ADDRESS[:PORT]")
        address = m.group(1) or m.group(3) or m.group(5)
        port = int(m.group(2) or m.group(4) or 0) or None
        out[q] = Server(q, "daemon", address, port)
    return out


def ask_all(ctx, servers: dict) -> dict:
    """{name: capacity or MlnError}, every server asked at once."""
    results: dict = {}

    def ask(name, server):
        try:
            t = ctx.pm.hook.mln_remote_transport(server=server, ctx=ctx)
            if t is None:
                raise MlnError(f"no installed plugin speaks its transport '{server.transport}'")
            try:
                results[name] = t.request({"verb": "capacity"}, lambda line: None)
            finally:
                t.close()
        except MlnError as e:
            results[name] = e
        except Exception as e:          # a transport's own failure: reported, not a traceback
            results[name] = MlnError(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=ask, args=item) for item in servers.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {n: results[n] for n in servers}


@click.command("daemon_status")
@click.option("-r", "csv", is_flag=True, help="CSV: server,projects,vms,used,free,max (memory in MB).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def daemon_status(click_ctx, csv, fmt):
    """Ask every server (mln.conf's server lines, or daemon_status_query) what it runs and has left.

    Per server: projects, running guests, memory used, available and in all (MB), CPUs
    and free disk of the projects directory (MB); then the totals and the servers that did
    not answer. Exit status 1 when one did not answer.
    """
    ctx = _CLI.get_ctx(click_ctx)
    servers = _targets(ctx.config)
    if not servers:
        raise MlnError("no servers to ask: add 'server NAME TRANSPORT ADDRESS' or 'daemon_status_query "
                       "ADDRESS' lines to mln.conf")
    results = ask_all(ctx, servers)
    ok = {n: r for n, r in results.items() if not isinstance(r, MlnError)}
    failed = {n: str(r) for n, r in results.items() if isinstance(r, MlnError)}
    keys = ("projects", "vms", "memory_used", "memory_free", "memory_total", "cpus", "disk_free")
    total = {k: sum(int(r.get(k) or 0) for r in ok.values()) for k in keys}
    if fmt == "json":
        import json
        click.echo(json.dumps({"servers": [dict(r, server=n, transport=servers[n].transport,
                                                address=servers[n].address) for n, r in ok.items()],
                               "total": total,
                               "not_answering": [{"server": n, "error": e} for n, e in failed.items()]},
                              indent=2))
    elif csv:
        click.echo("server,projects,vms,used,free,max")
        for n, r in ok.items():
            click.echo(f"{n},{r.get('projects', 0)},{r.get('vms', 0)},{r.get('memory_used', 0)},"
                       f"{r.get('memory_free', 0)},{r.get('memory_total', 0)}")
    else:
        width = max([len(n) for n in servers] + [10])
        row = "{:<%d} {:>6} {:>5} {:>9} {:>9} {:>9} {:>5} {:>10}" % width
        click.echo(row.format("Server", "#proj", "#vms", "Mem.Used", "Mem.Ava", "Mem.Max", "CPUs", "Disk.Ava"))
        for n, r in ok.items():
            click.echo(row.format(n, *(int(r.get(k) or 0) for k in keys)))
        click.echo(row.format("Total:", *(total[k] for k in keys)))
        click.echo("(memory and disk in MB)")
        if failed:
            click.echo("Not answering:")
            for n, e in failed.items():
                click.echo(f"  {n}: {e}")
    if failed:
        for n, e in failed.items():
            click.echo(f"mln: warning: server {n} did not answer: {e}", err=True)
        sys.exit(1)


_CLI.cli.add_command(daemon)
_CLI.cli.add_command(daemon_ca)
_CLI.cli.add_command(daemon_status)
