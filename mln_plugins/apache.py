"""Plugin ``apache``: Apache settings of a host (spec 3.7, 5.4).

A host that has an ``apache`` block gets its directives written into the guest's
Apache configuration; a project-wide ``apache`` block in ``global`` gives defaults that
the host's own block overrides, directive by directive::

    global { apache { MaxClients 150 } }
    host web14 { apache { DocumentRoot /var/www/web14 } }

* Only hosts with an ``apache`` block (their own or a superclass's) are touched; the
  global block alone enables nothing.
* ``DocumentRoot`` goes into the default site: every ``DocumentRoot`` line of
  ``/etc/apache2/sites-enabled/000-default.conf`` (or ``000-default`` on older
  releases) is replaced. That file is normally a symbolic link into
  ``sites-available``; the real file is edited so that the link stays a link. The
  directory is created in the guest if it is missing, and Apache is allowed to serve it
  (a ``<Directory>`` block with ``Require all granted``).
* Every other directive goes, as ``Name value``, into a file mln owns:
  ``/etc/apache2/conf-available/mln.conf`` enabled by the link
  ``conf-enabled/mln.conf`` (Apache 2.4 layout), or a marked section of
  ``apache2.conf`` on older layouts. ``MaxClients`` is written as
  ``MaxRequestWorkers``, its name since Apache 2.4 (2.4 still accepts the old name);
  on a 2.2 layout it stays ``MaxClients``.
* Apache directive names are case-insensitive, so ``maxclients`` in a host overrides
  ``MaxClients`` from ``global``. A directive repeated inside one block (``Alias``...)
  is written once per line.
* Idempotent: running it again gives the same files.
* A guest without ``/etc/apache2/apache2.conf`` (a template without Apache) is a warning
  that names the host, its template and the settings skipped; the build goes on, as in
  the original. A guest without a default site: DocumentRoot is skipped with a warning,
  the other directives are written. ``mln build --strict`` makes both errors. A
  relative DocumentRoot is an error.
"""
from __future__ import annotations

import posixpath

from mln_core import hookimpl
from mln_core.errors import Problem
from mln_core.guest import set_section

NAME = "apache"
ETC = "/etc/apache2"
#: Old directive names and their Apache 2.4 names.
RENAMED_24 = {"maxclients": "MaxRequestWorkers"}
#: How these are spelled when written (directive names are case-insensitive).
SPELLING = {"maxclients": "MaxClients", "maxrequestworkers": "MaxRequestWorkers"}
#: The default site: (file in sites-enabled, candidate names in sites-available).
DEFAULT_SITES = (("000-default.conf", ("000-default.conf",)),
                 ("000-default", ("default", "000-default")))


@hookimpl
def mln_register_keywords(registry):
    text = "Apache directives (DocumentRoot, MaxClients, ...); the host's override the global ones"
    registry.block("global", NAME, "free", "project-wide Apache defaults for hosts with an apache block")
    registry.block("host", NAME, "free", text)


def directives(host, project) -> list[tuple[str, str, object]]:
    """The effective directives of ``host``: ``(name, value, line)``, global ones first.

    Empty if the host has no ``apache`` block. A directive the host sets replaces every
    line of the same name from ``global`` (compared case-insensitively; ``MaxClients`` and
    ``MaxRequestWorkers`` are the same directive)."""
    own = host.tree.block(NAME) if host.tree is not None else None
    if own is None:
        return []
    gtree = project.global_tree if project is not None else None
    glob = gtree.block(NAME) if gtree is not None else None
    host_names = {_key(ln.words[0]) for ln in own.lines}
    out = [(ln.words[0], ln.value, ln) for ln in (glob.lines if glob else [])
           if _key(ln.words[0]) not in host_names]
    return out + [(ln.words[0], ln.value, ln) for ln in own.lines]


def _key(name: str) -> str:
    """Directives that are the same for Apache: case-insensitive, old names = new names."""
    key = name.lower()
    return RENAMED_24.get(key, key).lower()


@hookimpl
def mln_validate(project, ctx):
    problems = []
    for host in project.hosts.values():
        for name, value, line in directives(host, project):
            if name.lower() == "documentroot" and not value.startswith("/"):
                problems.append(Problem("error", f"host {host.name}: apache: DocumentRoot must be an "
                                                 f"absolute path, not '{value}'", line.pos))
        block = host.tree.block(NAME) if host.tree is not None else None
        for sub in (block.blocks.values() if block is not None else []):
            problems.append(Problem("error", f"host {host.name}: apache: sub-blocks such as "
                                             f"'{sub.label}' are not supported; write one directive per line",
                                    sub.pos))
    return problems


def _quote(path: str) -> str:
    return f'"{path}"' if any(c.isspace() for c in path) or not path else path


@hookimpl
def mln_configure_image(host, guest, ctx):
    found = directives(host, getattr(ctx, "project", None))
    if not found:
        return
    if guest.read(f"{ETC}/apache2.conf") is None:
        family = getattr(guest, "family", None) or "unknown"
        names = ", ".join(dict.fromkeys(name for name, _v, _l in found))
        ctx.warn(f"apache: host {host.name} has an apache block, but its image (template {host.template}, "
                 f"family {family}) has no {ETC}/apache2.conf, so its Apache settings ({names}) are not "
                 "written (skipped); install Apache (Debian package apache2) in the template")
        return
    apache24 = guest.is_dir(f"{ETC}/conf-available")
    docroot = None
    others = []
    for name, value, _line in found:
        if name.lower() == "documentroot":
            docroot = value
        else:
            key = name.lower()
            others.append(((apache24 and RENAMED_24.get(key)) or SPELLING.get(key, name), value))
    if docroot is not None and not _set_document_root(host, guest, docroot, ctx):
        docroot = None                            # skipped, with a warning
    if docroot is not None:
        if not guest.exists(docroot):
            guest.mkdir(docroot, 0o755)
    _write_settings(guest, docroot, others, apache24)


# -- DocumentRoot -----------------------------------------------------------------------------

def _default_site(host, guest) -> tuple[str, str | None] | None:
    """(path in sites-enabled, or the sites-available file if the site is not enabled;
    the sites-available file it may be a link to, or None); None if there is no default
    site."""
    for enabled, available in DEFAULT_SITES:
        e = f"{ETC}/sites-enabled/{enabled}"
        if guest.read(e) is not None:
            targets = [f"{ETC}/sites-available/{a}" for a in available]
            return e, next((t for t in targets if guest.read(t) is not None), None)
    for _enabled, available in DEFAULT_SITES:
        for a in available:
            path = f"{ETC}/sites-available/{a}"
            if guest.read(path) is not None:
                return path, None
    return None


def _is_docroot(line: str) -> bool:
    words = line.split(None, 1)
    return bool(words) and words[0].lower() == "documentroot"


def _with_document_root(text: str, docroot: str) -> str:
    """``text`` with every DocumentRoot line set to ``docroot``; a <VirtualHost> without
    one gets one (and a file without any <VirtualHost> an mln section)."""
    value = _quote(docroot)
    lines = text.splitlines()
    has = any(_is_docroot(ln) for ln in lines)
    vhosts = any(ln.lstrip().lower().startswith("<virtualhost") for ln in lines)
    if not has and not vhosts:
        return set_section(text, NAME, f"DocumentRoot {value}")
    out = []
    for ln in lines:
        indent = ln[:len(ln) - len(ln.lstrip())]
        if _is_docroot(ln):
            out.append(f"{indent}DocumentRoot {value}")
            continue
        out.append(ln)
        if not has and ln.lstrip().lower().startswith("<virtualhost"):
            out.append(f"{indent}\tDocumentRoot {value}")
    return "\n".join(out) + "\n"


def _set_document_root(host, guest, docroot: str, ctx) -> bool:
    """Set DocumentRoot in the default site; False (with a warning) if there is none."""
    found = _default_site(host, guest)
    if found is None:
        ctx.warn(f"apache: host {host.name} sets DocumentRoot {docroot}, but its image (template "
                 f"{host.template}) has no default site: neither {ETC}/sites-enabled/000-default.conf nor "
                 f"{ETC}/sites-available/000-default.conf exists, so DocumentRoot is not set (skipped)")
        return False
    site, target = found
    old = guest.read_text(site)
    new = _with_document_root(old, docroot)
    if new == old:
        return True
    # The enabled site is normally a link to sites-available. GuestFS.write replaces a
    # link by a file, so write the file the link points to: then reading the enabled
    # path through the link gives the new text. If it does not, it was a copy (or a link
    # elsewhere): write it too.
    if target is not None and guest.read_text(target) == old:
        guest.write_text(target, new)
        if guest.read_text(site) == new:
            return True
    guest.write_text(site, new)
    return True


# -- other directives -------------------------------------------------------------------------

def _write_settings(guest, docroot: str | None, others: list[tuple[str, str]], apache24: bool) -> None:
    body = [f"{name} {value}" for name, value in others]
    if docroot is not None:
        access = ["    Require all granted"] if apache24 else ["    Order allow,deny", "    Allow from all"]
        body += [f"<Directory {_quote(docroot)}>", "    Options FollowSymLinks", "    AllowOverride None",
                 *access, "</Directory>"]
    if apache24:
        conf = f"{ETC}/conf-available/mln.conf"
        link = f"{ETC}/conf-enabled/mln.conf"
        if body:
            guest.write_text(conf, "# Written by mln (apache plugin): the apache block of the project file.\n"
                                   "# Rewritten at every build; change the project file instead.\n"
                             + "\n".join(body) + "\n")
            guest.symlink(posixpath.relpath(conf, posixpath.dirname(link)), link)
        else:
            guest.remove(link)
            guest.remove(conf)
        return
    main = f"{ETC}/apache2.conf"
    text = guest.read_text(main)
    new = set_section(text, NAME, "\n".join(body) if body else None)
    if new != text:
        guest.write_text(main, new)
