"""Write the golden files of test_examples.py: ``python tests/core/regen_golden.py``.

For every example project in tests/core/examples (except oscourse.mln, a fragment that
only other files include) it writes

* ``golden/<example>.show.txt``: the output of ``mln show -f <example>.mln``;
* ``golden/<example>.parse-H.txt``: ``mln parse -f <example>.mln -H /host/NAME`` for
  every host, one after the other, each after a line ``# -H /host/NAME`` (``-H`` prints
  the block's contents only, as the original).

mln runs in the examples directory with relative file names (no absolute paths in the
output) and with MLN_CONFIG naming an empty file (no site configuration). READ the diff
before committing regenerated files: they are the expected behaviour.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"
GOLDEN = HERE / "golden"
FRAGMENTS = {"oscourse"}


def examples() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.mln") if p.stem not in FRAGMENTS)


def _mln(*argv: str) -> str:
    from mln_core.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    if code != 0:
        raise RuntimeError(f"mln {' '.join(argv)} exited {code}: {err.getvalue()}")
    return out.getvalue()


def render(example: str) -> dict[str, str]:
    """{golden file name: its content} for one example; run with cwd = EXAMPLES."""
    import json
    fname = f"{example}.mln"
    hosts = json.loads(_mln("show", "--format", "json", "-f", fname))["hosts"]
    return {
        f"{example}.show.txt": _mln("show", "-f", fname),
        f"{example}.parse-H.txt": "".join(f"# -H /host/{h}\n" + _mln("parse", "-f", fname, "-H", f"/host/{h}")
                                          for h in hosts),
    }


@contextlib.contextmanager
def isolated():
    """cwd = the examples, an empty MLN_CONFIG, no plugin controls from the caller."""
    old_cwd, old_env = os.getcwd(), dict(os.environ)
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
        os.environ["MLN_CONFIG"] = conf.name
        for var in ("MLN_DISABLE_PLUGINS", "MLN_TRACE_PLUGINS"):
            os.environ.pop(var, None)
        os.chdir(EXAMPLES)
        try:
            yield
        finally:
            os.chdir(old_cwd)
            os.environ.clear()
            os.environ.update(old_env)


def main() -> int:
    GOLDEN.mkdir(exist_ok=True)
    with isolated():
        for example in examples():
            for name, text in render(example).items():
                (GOLDEN / name).write_text(text)
                print(f"wrote {GOLDEN / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
