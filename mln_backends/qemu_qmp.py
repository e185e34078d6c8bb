"""QMP (the QEMU Machine Protocol) as the ``qemu`` backend speaks it; a helper module of
that backend, not a plugin.

Every connection goes through the host's machine (``machine.connect_unix``), never a
socket of its own, so that tests and tracing see it. ``qmp`` is for status and shutdown
(None when QEMU does not answer); ``run`` runs a coroutine on a session and lets the
errors through (``describe`` says them in a sentence); ``save_to_fd`` and
``load_from_fd`` are ``mln stop -S`` and its resume.
"""
from __future__ import annotations

import os
import time


class QmpFailure(Exception):
    """A QMP exchange did not go as it must (the message says what happened)."""


#: a QMP connection that QEMU closes, or whose capabilities negotiation it answers
#: wrongly, is tried again (seen right after a guest arrived by live migration): up to
#: this many connections, 0.1 s, then 0.3 s apart
CLOSED_RETRIES = 3


async def session(machine, sock: str, work, timeout: float = 5.0):
    """Connect to ``sock`` (through ``machine``), run ``await work(client)``, disconnect."""
    import asyncio      # here, not at the top: most commands never talk QMP
    from qemu.qmp import ConnectError, QMPClient
    for attempt in range(CLOSED_RETRIES):
        client = QMPClient("mln")
        try:
            conn = machine.connect_unix(sock, timeout)
        except TimeoutError:
            raise
        except OSError as e:       # as the client says it when it connects by itself
            raise ConnectError("Failed to establish connection", e) from None
        try:
            await asyncio.wait_for(client.connect(conn), timeout)
            break
        except BaseException as e:
            try:
                await asyncio.wait_for(client.disconnect(), timeout)
            except Exception:
                pass
            conn.close()
            if not _closed(e) or attempt == CLOSED_RETRIES - 1:
                raise
            await asyncio.sleep(0.1 * 3 ** attempt)
    try:
        return await work(client)
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), timeout)
        except Exception:
            pass
        conn.close()


def _closed(e: BaseException) -> bool:
    """Did QEMU close the connection, or answer the negotiation wrongly, before the
    session was set up?"""
    from qemu.qmp import ConnectError
    from qemu.qmp.qmp_client import NegotiationError
    while isinstance(e, ConnectError) and not isinstance(e, NegotiationError):
        e = e.exc
    return isinstance(e, (EOFError, NegotiationError))


def run(machine, sock: str, work, timeout: float = 5.0):
    """``await work(client)`` on a QMP session to ``sock``; its errors go through."""
    import asyncio
    return asyncio.run(session(machine, sock, work, timeout))


async def _qmp(machine, sock: str, command: str, timeout: float):
    import asyncio
    return await session(machine, sock, lambda c: asyncio.wait_for(c.execute(command), timeout), timeout)


def qmp(machine, sock: str, command: str, timeout: float = 5.0):
    """Run one QMP command on ``sock``; None if QEMU does not answer."""
    import asyncio
    if not os.path.exists(sock):
        return None
    try:
        return asyncio.run(_qmp(machine, sock, command, timeout))
    except Exception:
        return None


def describe(e: BaseException) -> str:
    import asyncio
    from qemu.qmp import ExecuteError
    if isinstance(e, QmpFailure):
        return str(e)
    if isinstance(e, ExecuteError):
        return f"QEMU refused '{e.sent.get('execute', '?')}': {e}"
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "QEMU did not answer on QMP in time"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


# -- save and resume (mln stop -S / mln start) --------------------------------------------------------

FDNAME = "mln-state"


async def save_to_fd(client, fd: int, timeout: float, finish=lambda: None) -> None:
    """Stop the guest, migrate it into ``fd``, wait until done, then ``finish()`` (sync and
    rename the file); the guest runs on if any of it fails."""
    import asyncio
    status = (await client.execute("query-status"))["status"]
    if status in ("inmigrate", "finish-migrate", "postmigrate", "save-vm", "restore-vm"):
        raise QmpFailure(f"QEMU is busy with a migration ({status})")
    await client.execute("stop")       # from here on the guest does not write its disk
    try:
        client.send_fd_scm(fd)
        await client.execute("getfd", {"fdname": FDNAME})
        # the default limit (32 MiB/s) only slows a stopped guest's save down
        await client.execute("migrate-set-parameters", {"max-bandwidth": 8 * 2**30})
        await client.execute("migrate", {"uri": f"fd:{FDNAME}"})
        end = time.monotonic() + timeout
        while True:
            info = await client.execute("query-migrate")
            state = info.get("status")
            if state == "completed":
                try:
                    finish()
                except OSError as e:
                    raise QmpFailure(f"writing the save file failed: {e.strerror or e}") from None
                return
            if state in ("failed", "cancelled"):
                raise QmpFailure(f"the migration into the save file {state}: "
                                 f"{info.get('error-desc', 'QEMU gave no reason')}")
            if time.monotonic() > end:
                await client.execute("migrate_cancel")
                for _ in range(100):      # let the cancel settle before the guest goes on
                    if (await client.execute("query-migrate")).get("status") not in \
                            ("setup", "active", "cancelling", "pre-switchover", "device"):
                        break
                    await asyncio.sleep(0.05)
                raise QmpFailure(f"the migration into the save file did not finish in {timeout:g} s")
            await asyncio.sleep(0.05)
    except BaseException:
        if status == "running":
            try:
                await client.execute("cont")
            except Exception:
                pass
        raise


async def load_from_fd(client, fd: int, timeout: float, ran=lambda: None) -> None:
    """Load the saved state from ``fd`` and continue the guest; ``ran()`` right after a
    successful ``cont`` (the guest has run and writes its disk from then on)."""
    import asyncio
    client.send_fd_scm(fd)
    await client.execute("getfd", {"fdname": FDNAME})
    await client.execute("migrate-incoming", {"uri": f"fd:{FDNAME}"})
    end = time.monotonic() + timeout
    while True:
        status = (await client.execute("query-status"))["status"]
        if status == "running":
            return
        if status in ("paused", "postmigrate", "prelaunch"):
            await client.execute("cont")       # it was saved stopped, so it arrives stopped
            ran()
        elif status != "inmigrate":
            raise QmpFailure(f"the guest is '{status}' after loading its saved state")
        if time.monotonic() > end:
            raise QmpFailure(f"loading the saved state did not finish in {timeout:g} s")
        await asyncio.sleep(0.05)
