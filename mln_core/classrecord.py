"""The record of a class of copies (:mod:`mln_core.fanout`): ``<projects>/.classes/<name>.json``,
the choice of copies by pattern, and ``reset`` of one copy."""
from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import tempfile
import time

from .errors import MlnError
from .fanout import _SECRET_COLUMN, ClassPlan, Copy
from .names import name_problem
from .private import make_dir, write_file

# ---------------------------------------------------------------------------------------
# the record of a class: <projects>/.classes/<name>.json
# ---------------------------------------------------------------------------------------

class Classes:
    """The classes recorded in a projects directory."""

    def __init__(self, store):
        self.store = store
        self.dir = os.path.join(store.root, ".classes")

    def path(self, name: str) -> str:
        problem = name_problem("project", name)
        if problem:
            raise MlnError(f"class name: {problem}")
        return os.path.join(self.dir, f"{name}.json")

    def names(self) -> list[str]:
        if not os.path.isdir(self.dir):
            return []
        return sorted(n[:-5] for n in os.listdir(self.dir) if n.endswith(".json") and not n.startswith(".")
                      and name_problem("project", n[:-5]) is None)

    def read(self, name: str) -> dict | None:
        try:
            with open(self.path(name), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise MlnError(f"cannot read the record of class {name} ({self.path(name)}): {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("copies"), list):
            raise MlnError(f"the record of class {name} ({self.path(name)}) is damaged")
        return data

    def require(self, name: str) -> dict:
        data = self.read(name)
        if data is None:
            known = ", ".join(self.names()) or "there are none"
            raise MlnError(f"no class '{name}' in {self.store.root} (classes: {known})")
        return data

    def projects(self, name: str) -> set[str]:
        data = self.read(name) or {"copies": []}
        return {c.get("project") for c in data["copies"]}

    def copies(self) -> dict[str, dict]:
        """{project: {"class", "copy", "owner"}} of every copy of every class (a damaged
        record is left out: ``mln class list`` names it)."""
        out = {}
        for name in self.names():
            try:
                data = self.read(name) or {"copies": []}
            except MlnError:
                continue
            for c in data["copies"]:
                if isinstance(c, dict) and c.get("project"):
                    out[c["project"]] = {"class": name, "copy": c.get("copy"), "owner": c.get("owner")}
        return out

    def write(self, name: str, data: dict) -> None:
        make_dir(self.dir, exist_ok=True)
        tmp = self.path(name) + f".tmp-{os.getpid()}"
        write_file(tmp, json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path(name))

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(name))
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.dir, f".{name}.lock"))
            os.rmdir(self.dir)

    @contextlib.contextmanager
    def lock(self, name: str):
        """Held while the record changes (``build``, ``remove``)."""
        self.path(name)
        make_dir(self.dir, exist_ok=True)
        fd = os.open(os.path.join(self.dir, f".{name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise MlnError(f"class '{name}' is busy: another mln class command is changing it; try again "
                               "when it is done") from None
            yield
        finally:
            os.close(fd)


def merged(old: dict | None, plan: ClassPlan, built: list[Copy]) -> tuple[dict, list[str]]:
    """The record after building ``built``: the copies recorded before and ``built``, whose
    rows replace their old ones; copies of the old record that the table no longer has
    stay (second value: their ids)."""
    record = plan.record()
    by_id = {c["copy"]: c for c in (old or {}).get("copies", [])}
    table_ids = {c.id for c in plan.copies}
    chosen = {c.id for c in built}
    record["copies"] = [c.record() if c.id in chosen else by_id[c.id] for c in plan.copies
                        if c.id in chosen or c.id in by_id]
    kept = [cid for cid in by_id if cid not in table_ids]
    record["copies"] += [by_id[cid] for cid in kept]
    record["built"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record, kept


def select(record: dict, patterns: tuple[str, ...] | list[str]) -> list[dict]:
    """The copies of ``record`` whose id (or project) matches a pattern (all without any);
    an error names a pattern that matches none."""
    copies = record["copies"]
    if not patterns:
        return list(copies)
    out = []
    for pattern in patterns:
        hits = [c for c in copies if fnmatch.fnmatchcase(c["copy"], pattern) or fnmatch.fnmatchcase(
            c.get("project") or "", pattern)]
        if not hits:
            ids = ", ".join(c["copy"] for c in copies[:10]) + (" ..." if len(copies) > 10 else "")
            raise MlnError(f"no copy of class {record['class']} matches '{pattern}' "
                           f"(copies: {ids or 'none'})")
        out += [c for c in hits if c not in out]
    return [c for c in copies if c in out]


def secret_variables(lab: str, registry) -> list[str]:
    """The variables the lab file uses in a secret value (``root_passwd $pw``, a password
    in a ``users`` block): :func:`shown_variables` never prints their values."""
    import re

    from .fanout import parse_lab
    from .private import Secrets, _walk_any
    names: set[str] = set()
    _walk_any(Secrets(registry), parse_lab(lab, finish=False).root, "/",
              lambda line, value, masked: names.update(re.findall(r"\$\[?([A-Za-z0-9_]+)", value)))
    return sorted(names)


def shown_variables(variables: dict, secret=()) -> dict:
    """Variables to print: values of columns named like a password, or used in a secret
    value of the lab (``secret``), are ``<secret>``."""
    return {k: ("<secret>" if _SECRET_COLUMN.search(k) or k in secret else v) for k, v in variables.items()}


# ---------------------------------------------------------------------------------------
# reset
# ---------------------------------------------------------------------------------------

def reset(engine, project: str) -> bool:
    """Stop the copy at once, build it again from its stored project file (new disks),
    start it again if it ran; True if it was started again."""
    from . import remote
    rows = remote.status(engine, project)
    was_up = any(r["state"] == "up" for r in rows if r["kind"] == "host")
    if any(r["state"] == "up" for r in rows):
        remote.stop(engine, project, hard=True)
    with open(engine.store.source_path(project), encoding="utf-8") as f:
        text = f.read()
    with tempfile.TemporaryDirectory(prefix="mln-reset-") as tmp:
        path = os.path.join(tmp, f"{project}.mln")
        write_file(path, text)
        remote.build(engine, path, replace=True, simulate=False, confirm=None)
    if was_up:
        remote.start(engine, project)
    return was_up
