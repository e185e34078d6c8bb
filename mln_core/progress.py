"""Progress lines and the bounded parallel pool that build, start and upgrade share."""
from __future__ import annotations

import shutil
import sys
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait


class Progress:
    """One status line that updates in place on a terminal; plain lines otherwise."""

    def __init__(self, what: str, total: int, stream=None, quiet: bool = False):
        self.what, self.total, self.done = what, total, 0
        self.stream = stream if stream is not None else sys.stderr    # the one of now, not of the import
        if quiet:                                                     # -q: no progress lines
            import io
            self.stream = io.StringIO()
        self.tty = self.stream.isatty()
        self.lock = threading.Lock()
        self.active: dict[str, str] = {}

    def step(self, item: str, step: str) -> None:
        with self.lock:
            self.active[item] = step
            if self.tty:
                self._draw()
            else:
                print(f"+---> {item}: {step}", file=self.stream, flush=True)

    def finish(self, item: str, message: str = "done") -> None:
        with self.lock:
            self.done += 1
            self.active.pop(item, None)
            if self.tty:
                self.stream.write("\r\033[K")
            print(f"+---> {item}: {message}", file=self.stream, flush=True)
            if self.tty:
                self._draw()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _draw(self) -> None:
        busy = ", ".join(f"{k} ({v})" for k, v in list(self.active.items())[:3])
        line = f"[{self.done}/{self.total}] {self.what}: {busy}"
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r\033[K" + line[:width])
        self.stream.flush()


def parallel(items, fn, jobs: int) -> None:
    """Run ``fn(item)`` on a bounded pool; on the first failure finish the running ones
    and raise that failure."""
    if not items:
        return
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(fn, item): item for item in items}
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        wait(pending)
        for f in list(done) + list(pending):
            if f.cancelled():
                continue
            exc = f.exception()
            if exc is not None:
                errors.append(exc)
    if errors:
        raise errors[0]
