"""Every hook mln calls, one documented spec each.

Plugins implement hooks with ``mln_core.hookimpl`` (a pluggy ``HookimplMarker("mln")``)
on a module or object registered through the ``mln.plugins`` entry-point group.

Conventions for all hooks:

* ``ctx`` is the :class:`mln_core.context.Context` of the running command: the
  configuration (``ctx.config``), the project's store directory when there is one
  (``ctx.project_dir``), a command runner (``ctx.run``) and output (``ctx.log``).
* ``host``, ``switch`` and ``project`` are objects of :mod:`mln_core.model`: resolved,
  validated, read-only. Their ``tree`` attribute is the effective block tree, where a
  plugin reads its own keywords (``host.tree.get("vcpus")``, ``host.tree.block("apache")``).
* A *firstresult* hook asks "who handles this?": plugins that do not handle the object
  return ``None`` and the first non-None answer is used. Other hooks are called on every
  plugin, in alphabetical order of plugin name, and their non-None results are collected.
* A plugin acts only on the hosts, switches and projects that ask for it (its keyword or
  block is present, or it is the chosen backend), and every change it makes to a guest
  image is idempotent: a rebuild runs the configure hooks again on configured images.
* Errors: raise :class:`mln_core.errors.MlnError` with a message that names the object.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mln")


# ---------------------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------------------

@hookspec(historic=True)
def mln_register_keywords(registry):
    """Declare the keywords and blocks this plugin understands.

    Called once when the plugin manager starts (historic: plugins registered later are
    called too). ``registry`` is a :class:`mln_core.keywords.KeywordRegistry`; call
    ``registry.keyword(context, name, help=...)``, ``registry.block(context, name,
    contents=..., help=...)`` or ``registry.hypervisor(name, flags=...)``. ``mln check``
    warns about any keyword nobody declared, with a "did you mean" suggestion.
    A keyword whose value is a secret (a password, a token) is declared with
    ``secret=True``; a block of lines whose lines hold one with ``secret_word=N`` (the
    index of that word, as 1 for ``users``: ``name password``). mln then never prints the
    value (``show``, ``parse``, ``diff``, upgrade plans and traces print ``<secret>``),
    and keeps the saved project readable by its owner only (see docs/security.md).
    Return value: ignored.
    """


@hookspec(historic=True)
def mln_register_commands(cli):
    """Add subcommands to the ``mln`` command line.

    ``cli`` is the root :class:`click.Group`; call ``cli.add_command(cmd)``. Called once at
    start-up. Return value: ignored.
    """


# ---------------------------------------------------------------------------------------
# Parse and check
# ---------------------------------------------------------------------------------------

@hookspec
def mln_post_parse(doc, ctx):
    """Change the parsed tree before anything else reads it (autoenum creates hosts here).

    Called once after a project file is parsed (with its includes), before superclass
    merging, by every command that reads a project (``build``, ``check``, ``show``,
    ``parse`` with a query). ``doc`` is a :class:`mln_core.lang.parser.Document`;
    change ``doc.root`` with the :class:`~mln_core.lang.tree.Block` building methods and
    report problems with ``doc.problems.error(message, pos)`` / ``.warn``. Return value: ignored.
    """


@hookspec
def mln_validate(project, ctx):
    """Check a resolved project for problems this plugin knows about.

    Called by ``check``, ``build`` and ``show`` after the model is built. Return a list
    of :class:`mln_core.errors.Problem` (or None); an error stops ``build``.
    """


@hookspec(firstresult=True)
def mln_runnable(host, ctx):
    """Can ``host`` run on this machine as it is configured?

    Called by ``mln check`` for every host, and by ``start`` for the hosts it is to start,
    before it starts anything. The backend of ``host.hypervisor`` returns None when it can
    (or when the host is not yours), else one sentence saying why not and what to do;
    ``check`` prints it as a warning on the host, ``start`` refuses with it (nothing started).
    """


# ---------------------------------------------------------------------------------------
# This machine
# ---------------------------------------------------------------------------------------

@hookspec
def mln_doctor(ctx):
    """Say whether what this plugin needs works on this machine (``mln doctor``).

    Called once by ``mln doctor``, on every plugin. Return a list of findings (or None),
    each a dict: ``name`` (what was checked: "uml", "vde_switch", "KVM"...), ``ok`` (True
    if it works here), ``detail`` (one line: the version found, or why it cannot work),
    ``remedy`` (what to do when not ok, "" otherwise) and, for a hypervisor backend,
    ``hypervisor`` (its name as declared with ``registry.hypervisor``): ``mln doctor``
    exits non-zero when the finding of the configured ``default_hypervisor`` is not ok.
    A check may take a moment (a probe boot), but should remember its verdict.
    """


# ---------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mln_build_switch(switch, ctx):
    """Create the configuration of a virtual switch (not started yet).

    Called by ``build`` for every switch handled by this server. The plugin for the
    switch's kind records what it needs in ``ctx.state`` and returns True; return None
    if the switch is not yours.
    """


@hookspec(firstresult=True)
def mln_create_disk(host, ctx):
    """Create the host's disk from its template (file copy, overlay, logical volume...).

    Called by ``build`` for every host this machine builds, before the
    image is configured. Return a :class:`mln_core.model.Disk` describing what was made,
    or None if this storage plugin does not handle the host.
    """


@hookspec(firstresult=True)
def mln_open_image(host, disk, ctx):
    """Open the host's disk for individualization without running the guest.

    Return a :class:`mln_core.guest.GuestFS` (the core closes it), or None if this
    plugin cannot open that disk.
    """


@hookspec(firstresult=True)
def mln_guest_devices(host, ctx):
    """The device names the guest sees, for its fstab and boot configuration.

    The backend for ``host.hypervisor`` returns a dict: ``{"root": "/dev/vda", "swap":
    "/dev/vdb", "extra": ["/dev/vdc", ...], "console": "ttyS0"}``, and ``"nic_renames":
    {"vec0": "eth0"}`` when the hypervisor may give a NIC another name than the project's
    (the guest configuration renames it at boot); others return None.
    """


@hookspec
def mln_configure_image(host, guest, ctx):
    """Write the host's identity and this plugin's settings into the guest image.

    Called for every host that is built, in alphabetical plugin order, after the image
    is opened; ``guest`` is a :class:`mln_core.guest.GuestFS` and ``guest.family`` the
    detected OS family ("debian", "redhat", "busybox", "suse", "windows" or None).
    Must be idempotent. Return value: ignored.
    """


@hookspec(firstresult=True)
def mln_build_host(host, disk, ctx):
    """Write the hypervisor configuration of a host (command line, Xen cfg, .vmx...).

    Called after the image is configured. The backend for ``host.hypervisor`` writes its
    files under ``ctx.project_dir`` and returns True, or a dict of what its start needs,
    kept as ``ctx.host_state(host)["backend"]``; others return None. A backend that turns
    the disk into another format (VMware's VMDK) replaces ``ctx.host_state(host)["disk"]``.
    """


@hookspec
def mln_commit_host(host, ctx):
    """A build succeeded: put what it made for ``host`` outside the project directory
    under a temporary name in its place.

    Called for every host once all hosts are built and the project being replaced (if
    any) has been removed (``mln_remove_host`` with the old project's state), just before
    the new project directory is renamed into place; ``ctx.state`` is the new project's
    state, and changes to it are saved. Files written through ``ctx.outside()`` are moved
    by the core after this hook; a plugin with other outside resources (an LVM volume made
    under a temporary name, say) renames them here. A failed build never calls this hook:
    ``mln_remove_host`` with the new build's state removes what it made instead.
    Return value: ignored.
    """


# ---------------------------------------------------------------------------------------
# Run: start
# ---------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mln_attach_disk(host, disk, ctx):
    """Make the disk of ``host`` usable for one run, just before ``mln_start_host``.

    A storage plugin whose disks need something on this machine to be opened (an LVM
    volume without device-mapper: a loop device over its extents) makes it and returns the
    path the hypervisor should open instead of ``disk.path``; backends see it through
    ``ctx.disk(host)``. Return None if the disk is not yours or needs nothing.
    The core calls ``mln_detach_disk`` when the host has stopped or failed to start.
    """


@hookspec(firstresult=True)
def mln_start_switch(switch, ctx):
    """Start a switch (create the bridge, start the vde_switch...). True if handled."""


@hookspec
def mln_switch_attachment(switch, host, interface, ctx):
    """Connect a host's interface to a switch, just before the host starts.

    Called by a hypervisor backend (through ``ctx.attachment(host, interface)``) for each
    interface on a project switch. The switch's plugin prepares what the guest needs (a
    tap device on the bridge, say) and returns a :class:`mln_core.model.Attachment`:
    ``Attachment("vde", socket=PATH)``, ``Attachment("tap", tap=NAME, bridge=BRIDGE)`` or a
    kind of its own; other plugins return None.
    """


@hookspec(firstresult=True)
def mln_start_host(host, ctx):
    """Start a host's virtual machine. Return True when it was started, None if not yours."""


# ---------------------------------------------------------------------------------------
# Run: while it runs
# ---------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mln_host_status(host, ctx):
    """Is the host running? Return "up" or "down" (optionally "up: detail"), None if not yours.

    A backend that moves guests live says "up: inmigrate" for a host waiting for its
    guest (once a guest already on its way arrived: answer after it), and "up: postmigrate"
    for one whose guest was sent away; ``mln upgrade`` tells by these two which copy of a
    moving guest runs (:data:`mln_core.move.NOT_RUNNING`).
    """


@hookspec(firstresult=True)
def mln_switch_status(switch, ctx):
    """Is the switch up? Return "up" or "down", or None if not yours."""


@hookspec(firstresult=True)
def mln_console(host, ctx):
    """How ``mln console`` reaches the console of the running ``host``.

    Return ``{"socket": PATH}`` for a Unix stream socket that carries the console both ways,
    or ``{"input": FIFO, "log": PATH}`` when keystrokes are written into the named pipe
    FIFO and the console's output is appended to the file PATH; None if the host is not
    yours or your backend has no console mln can attach to.
    """


# ---------------------------------------------------------------------------------------
# Run: stop
# ---------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mln_save_host(host, ctx):
    """Save a running host's memory to a file in the project directory and stop it
    (``mln stop -S``); the backend's ``mln_start_host`` resumes from that file next time
    and deletes it.

    Return True when the host was saved (it is down afterwards), None if the host is not
    yours or your backend cannot save; the core then shuts the host down normally and
    says so.
    """


@hookspec(firstresult=True)
def mln_stop_host(host, hard, ctx):
    """Stop a host: ask the guest to shut down, or destroy it at once if ``hard``.

    Return True when the request was made (the core waits with ``mln_host_status``), None
    if not yours.
    """


@hookspec
def mln_switch_detachment(switch, host, interface, ctx):
    """Undo ``mln_switch_attachment`` after the host stopped (delete its tap device...).

    Called through ``ctx.detach(host, interface)``. Return value: ignored.
    """


@hookspec
def mln_host_stopped(host, ctx):
    """The host was seen down after a stop: remove its runtime files (sockets, pid files).

    Called by ``stop`` once per stopped host, after its interfaces were detached from
    their switches. Return value: ignored.
    """


@hookspec
def mln_detach_disk(host, disk, path, ctx):
    """Undo ``mln_attach_disk``: ``path`` is what it returned. Called after the host
    stopped, after a failed start, and before a start that finds an attachment of a run
    that ended without mln (a crashed guest). Return value: ignored.
    """


@hookspec(firstresult=True)
def mln_stop_switch(switch, ctx):
    """Stop a switch and delete what ``mln_start_switch`` made. True if handled."""


# ---------------------------------------------------------------------------------------
# Upgrade: change a built (maybe running) project
# ---------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mln_copy_disk(host, disk, ctx):
    """Copy a host's existing disk into the build in progress, grown to the host's new
    size if that is larger, so that ``mln upgrade`` can individualize the copy again while
    the old disk stays as it was until the upgrade commits.

    Called by ``upgrade`` for a changed host whose template did not change; ``disk`` is the
    :class:`mln_core.model.Disk` recorded for the old host (absolute path) and ``ctx`` is
    bound to the upgrade's staging directory (``ctx.path()`` is there). Return the new
    :class:`mln_core.model.Disk` (a path relative to the project directory, like
    ``mln_create_disk``), or None if this storage plugin does not handle the disk; when no
    plugin does, the plan says the host is made afresh from its template instead.
    """


@hookspec(firstresult=True)
def mln_plan_live(host, old, change, ctx):
    """Can the running host take ``change`` without a restart?

    Called by ``upgrade`` (and ``upgrade -s``) for each change of a running host whose kind
    is in :data:`mln_core.change.LIVE_KINDS`. ``old`` is the host as it was built and runs,
    ``host`` as the new file wants it, ``change`` a :class:`mln_core.change.Change`. The
    backend for ``old.hypervisor`` returns a short text saying how it will apply the change
    (``"virtio-balloon to 192M"``, ``"hot-plugged in PCI slot 0x05"``), which the plan
    shows; None means a restart (and the plan says no backend can do it live).
    """


@hookspec(firstresult=True)
def mln_apply_live(host, old, change, ctx):
    """Apply a change to the running guest, as ``mln_plan_live`` promised.

    Called by ``upgrade`` after the new project is in place (``ctx.project`` is the new
    project, ``ctx.state`` its state, with the host's configuration already rebuilt by
    ``mln_build_host``). Return True when done; raise MlnError if it cannot be done (the
    host is then restarted instead). A backend records what the guest now runs with that
    differs from a cold start of ``host`` (hot-added devices, the boot memory behind a
    balloon) so that ``stop -S``/``start`` and migration reproduce it until the next cold
    start.
    """


@hookspec(firstresult=True)
def mln_respan_switch(switch, old, new, apply, ctx):
    """Can ``switch`` change the servers it spans while it runs, without its guests noticing?

    Called by ``upgrade`` of a project spread over servers for a switch whose span changes
    (``old``, ``new``: the spans as :meth:`mln_core.context.Context.span` gives them, None
    for a switch on this server only). Return True if the switch plugin can (and, with
    ``apply``, did: the switch runs), False if the switch must be made again (its hosts
    restart), None if it is not yours. With ``apply`` False nothing may change.
    """


# ---------------------------------------------------------------------------------------
# Live migration: a running host moves to another server (mln upgrade, mln_core.move)
# ---------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mln_live_migration(host, shared, ctx):
    """Can the running ``host`` move to another server while it runs?

    Called by ``upgrade`` on the manager for each running host whose server changes.
    ``shared``: its disk is on shared storage (the server it leaves says so by
    :mod:`mln_core.sanpath`): the server it goes to reaches the same disk, which is then
    neither copied nor made there. The backend for ``host.hypervisor`` returns a short
    text saying how (``"QEMU: disk mirrored, then memory"``), which the plan shows; None
    (the default) means a cold move: the host is stopped, its disk copied (or, shared,
    left where it is), and it is started on the other server.
    """


@hookspec(firstresult=True)
def mln_migrate_in(host, disk, address, ctx):
    """Start ``host`` on this server waiting for its running guest to arrive.

    Called on the server the host moves to, after the upgrade there made its disk
    (``disk``: fresh from the template and not individualized: the guest's own disk
    arrives with it; or, on shared storage, the very disk the guest runs on, whose
    ``extra["shared"]`` is then true) and started its switches. ``address`` is this server's address on the
    underlay between the servers. Return a dict (JSON) that ``mln_migrate_out`` on the
    other server needs to send the guest (where to connect), or None if not your host.
    Called without the project's lock: other hosts of the project may be started here
    for their guests at the same time. Use only what is this host's own, and expect a
    port chosen free to be taken by another process before yours listens on it (then
    choose another).
    """


@hookspec(firstresult=True)
def mln_migrate_out(host, incoming, ctx):
    """Send the running ``host`` to the server whose ``mln_migrate_in`` answered ``incoming``.

    Called on the server the host leaves (``ctx`` bound to the project as it was, with the
    host in it). Copy what the other server lacks (the disk, unless both reach the same
    storage), then the memory; the guest must keep running here if anything fails (raise
    MlnError). On success the guest runs there and is paused here (``mln_stop_host`` with
    ``hard`` ends it later: once ``mln_migrate_done`` there succeeded, if this server's
    status of the host then says ``up: postmigrate``; else when the upgrade settles).
    Return a dict with ``downtime_ms`` and ``total_ms`` (and ``tail_ms``: how long the
    guest has been paused since the migration completed), and ``switched: True`` if the
    guest runs there already, or ``resumable: True`` if it may be let run there at once:
    in both cases ``mln_migrate_done`` is called there at once; else when the upgrade
    settles.
    """


@hookspec(firstresult=True)
def mln_migrate_done(host, ctx):
    """The guest arrived (``mln_migrate_out`` succeeded): drop what only the migration
    needed (a disk export) on the server the host moved to, and let the guest run if it
    waits paused; raise MlnError if it cannot run here. Also called on the server a guest
    was sent back to, after a move that did not happen. Return True if yours."""


# ---------------------------------------------------------------------------------------
# Export and import: a project as one archive
# ---------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mln_export_disk(host, disk, dest, ctx):
    """Write the disk of a stopped host into the directory ``dest`` for ``mln export``.

    Called by ``export`` for every host, with the project lock held and every host down;
    ``disk`` is the :class:`mln_core.model.Disk` recorded at build time (absolute path).
    The storage plugin that made the disk writes its contents as one or more regular files
    into ``dest`` (an empty directory; plain file names, no subdirectories), in a form that
    needs nothing of this machine (no backing file, no device): the core puts every file
    there into the archive with its SHA-256. Return a dict (JSON) describing what was
    written (kept in the archive's manifest), or None if the disk is not yours; raise
    MlnError if it is yours but cannot be exported.
    """


@hookspec(firstresult=True)
def mln_import_disk(host, disk, src, ctx):
    """Make the disk of ``host`` from what ``mln_export_disk`` wrote, for ``mln import``.

    Called by ``import`` for every host after every file of the archive was checked
    against its SHA-256. ``src`` is a directory holding the files ``mln_export_disk``
    wrote for this host (unverified content from the archive: check what you parse);
    ``disk`` is the Disk recorded in the exported state (its path as it was on the
    exporting machine: do not write there). ``ctx`` is bound to the import's staging
    directory, as in ``mln_create_disk``: write into ``ctx.path()``, or through
    ``ctx.outside()`` for a disk outside the project directory. Return the new
    :class:`mln_core.model.Disk` (a path relative to the project directory when inside it),
    or None if this storage plugin does not handle the host. A failed import calls
    ``mln_remove_host`` with the disks imported so far.
    """


# ---------------------------------------------------------------------------------------
# Remove
# ---------------------------------------------------------------------------------------

@hookspec
def mln_remove_host(host, ctx):
    """Delete what was built for a host outside the project directory (volumes, tap
    devices, registrations). Called by ``remove``, and by ``build -r`` for the project it
    replaces. Return value: ignored."""


@hookspec
def mln_remove_switch(switch, ctx):
    """Delete what was built for a switch outside the project directory. Return value: ignored."""


@hookspec
def mln_remove_project(project, ctx):
    """Last call of ``remove``, before the project directory is deleted. Return value: ignored."""


# ---------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mln_remote_transport(server, ctx):
    """How to reach another server of a project spread over several (``service_host``).

    Called on the machine the user types on, once per server a command needs, with the
    :class:`mln_core.servers.Server` of mln.conf's ``server NAME TRANSPORT ADDRESS`` line.
    The plugin of ``server.transport`` returns an object with ``request(request: dict,
    log) -> dict`` (carries one request of :mod:`mln_core.serve` to that server's
    ``mln serve``; calls ``log(line)`` for each progress line the server prints; returns
    the result, or raises MlnError with the server's error or why it cannot be reached),
    ``put(local_path, remote_path)`` (copies a file to the server), ``get(remote_path,
    local_path)`` (copies a file of the server's ``templates/.incoming`` here: a host's disk
    packed for a move to another server) and ``close()``. ``request`` is called from
    several threads at once (a live move sends two servers requests side by side): the
    ``ssh`` transport sends them all to one ``mln serve --many`` there. It may have
    ``prepare()``, called in a thread of its own before the command's first request, to
    connect in the background meanwhile. Other plugins return None.
    """
