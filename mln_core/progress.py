"""Progress lines and the bounded parallel pool that build, start and upgrade share."""
from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait


class Progress:
    """Progress of work on several items: a rich bar (done/total, elapsed time, the items
    being worked on and their step) on a terminal, with each finished item's line printed
    above it; plain ``+---> item: step`` lines otherwise; nothing with ``quiet`` (-q)."""

    def __init__(self, what: str, total: int, stream=None, quiet: bool = False):
        self.what, self.total, self.done = what, total, 0
        self.stream = stream if stream is not None else sys.stderr    # the one of now, not of the import
        self.quiet = quiet                                            # -q: no progress lines
        self.tty = not quiet and _is_terminal(self.stream)
        self.lock = threading.Lock()
        self.active: dict[str, str] = {}
        self._bar = self._task = self._proxy = None                   # rich, once something is shown

    def step(self, item: str, step: str) -> None:
        with self.lock:
            self.active[item] = step
            if self.quiet:
                return
            if self._drawing():
                self._update()
            else:
                print(f"+---> {item}: {step}", file=self.stream, flush=True)

    def finish(self, item: str, message: str = "done") -> None:
        with self.lock:
            self.done += 1
            self.active.pop(item, None)
            if self.quiet:
                return
            if self._drawing():
                from rich.text import Text
                self._update()                      # (the bar below the line: as it is now)
                self._bar.console.print(Text(f"+---> {item}: {message}"), soft_wrap=True)
            else:
                print(f"+---> {item}: {message}", file=self.stream, flush=True)

    def close(self) -> None:
        """Stop drawing (the bar's last state stays on screen); print normally again."""
        with self.lock:
            bar, self._bar = self._bar, None
            if bar is None:
                return
            self.active.clear()
            bar.update(self._task, completed=self.done, busy="")
            try:
                bar.stop()
            finally:
                self._unredirect()

    # -- the terminal bar ------------------------------------------------------------------
    def _drawing(self) -> bool:
        """Whether the bar is drawn: started the first time (rich is imported only then:
        most commands never draw one); not if rich finds the terminal unfit (TERM=dumb,
        TTY_INTERACTIVE=0...), and then plain lines."""
        if self._bar is not None or not self.tty:
            return self._bar is not None
        from rich.console import Console
        console = Console(file=getattr(self.stream, "rich_proxied_file", self.stream), highlight=False)
        if not console.is_interactive:
            self.tty = False
            return False
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar
        from rich.table import Column
        self._bar = Bar(TextColumn("{task.description}"), BarColumn(bar_width=24),
                        MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[busy]}", markup=False,     # the rest of the line
                                   table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
                        console=console, expand=True, redirect_stdout=False, redirect_stderr=False)
        self._task = self._bar.add_task(self.what, total=self.total, busy="")
        self._bar.start()
        self._redirect(console)
        return True

    def _update(self) -> None:
        """The bar as things are now, drawn at once (steps are few: each is seen)."""
        busy = ", ".join(f"{k} ({v})" for k, v in self.active.items())
        self._bar.update(self._task, completed=self.done, busy=busy, refresh=True)

    def _redirect(self, console) -> None:
        """While the bar is drawn, lines that anything prints on stderr (warnings,
        ``ctx.log``, ``--verbose`` commands, from any thread) go above it, whole."""
        if self.stream is sys.stderr and not isinstance(sys.stderr, _AboveBar):
            self._proxy = sys.stderr = _AboveBar(console, sys.stderr)

    def _unredirect(self) -> None:
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.drain()
            if sys.stderr is proxy:
                sys.stderr = proxy.file


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


class _AboveBar:
    """sys.stderr while a bar is drawn: each thread's text is kept until its line is
    complete, then printed above the bar (so two threads' lines never mix)."""

    def __init__(self, console, file):
        self.console, self.file = console, file
        self.lock = threading.Lock()
        self.pending: dict[int, str] = {}

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        me = threading.get_ident()
        with self.lock:
            done, nl, rest = (self.pending.pop(me, "") + text).rpartition("\n")
            if rest:
                self.pending[me] = rest
        if nl:
            self._print(done)
        return len(text)

    def flush(self) -> None:
        """Nothing to do: a line is printed once it is complete (see :meth:`drain`)."""

    def drain(self) -> None:
        """Print what was left without its end of line (the bar is going away)."""
        with self.lock:
            rest, self.pending = list(self.pending.values()), {}
        for text in rest:
            self._print(text)

    def _print(self, text: str) -> None:
        from rich.text import Text
        with self.console:
            self.console.print(Text.from_ansi(text), soft_wrap=True)

    def isatty(self) -> bool:
        return self.file.isatty()

    def fileno(self) -> int:
        return self.file.fileno()

    @property
    def rich_proxied_file(self):
        return self.file

    def __getattr__(self, name: str):
        return getattr(self.file, name)


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


class Pacer:
    """``pace()`` before each host of ``start -s``/``stop -s``: sleeps ``seconds``, except
    before the first host."""

    def __init__(self, seconds: float, sleep=time.sleep):
        self.seconds, self.sleep, self.first = seconds, sleep, True

    def __call__(self) -> None:
        if self.seconds and not self.first:
            self.sleep(self.seconds)
        self.first = False
