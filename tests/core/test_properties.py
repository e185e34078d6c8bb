"""Property tests (hypothesis).

* The writer: parse(write(tree)) is the same tree for generated trees, including words
  that need escapes (``; { } # \\`` and an escaped dollar).
* The lexer: escaping an ordinary character changes nothing.
* Robustness: random and mutated project texts through the parser, the model and
  ``mln check`` end in success or a positioned error, never in another exception or an
  internal error (exit 70).
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mln_core.cli import main
from mln_core.errors import MlnError, Pos
from mln_core.lang.parser import parse_text, tokenize
from mln_core.lang.tree import ESC_DOLLAR, NAMED_KINDS, NESTED_NAMED_KINDS, Block, new_root
from mln_core.lang.writer import write_tree
from mln_core.project import build_model

from .conftest import EXAMPLES, context

#: MLN_FUZZ_EXAMPLES=5000 python -m pytest tests/core/test_properties.py for a longer search.
SETTINGS = settings(max_examples=int(os.environ.get("MLN_FUZZ_EXAMPLES", 200)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------
# generated trees
# ---------------------------------------------------------------------------------------

WORD_CHARS = string.ascii_letters + string.digits + "!\"%&'()*+,-./:<=>?@[]^_`|~$;{}#\\" + "éß" + ESC_DOLLAR
words = st.text(WORD_CHARS, min_size=1, max_size=8)
ALNUM = string.ascii_letters + string.digits
names = st.builds(str.__add__, st.sampled_from(ALNUM), st.text(ALNUM + "_-", max_size=7))
var_names = st.text(ALNUM + "_", min_size=1, max_size=6)
RESERVED = set(NAMED_KINDS) | set(NESTED_NAMED_KINDS)


def is_var_definition(ws: list[str]) -> bool:
    return len(ws) >= 2 and ws[1] == "=" and ws[0].startswith("$")


line_words = st.lists(words, min_size=1, max_size=5).filter(lambda ws: not is_var_definition(ws))


@st.composite
def body(draw, block: Block, depth: int, top: bool = False):
    for ws in draw(st.lists(line_words, max_size=4)):
        block.add_line(ws)
    for name, value in draw(st.dictionaries(var_names, st.lists(words, max_size=3), max_size=2)).items():
        block.add_var(name, " ".join(value))
    if depth <= 0:
        return block
    for kind in draw(st.lists(words, max_size=2, unique=True)):
        if kind not in RESERVED:
            draw(body(block.child(kind), depth - 1))
    kinds = NAMED_KINDS if top else NESTED_NAMED_KINDS
    for kind, name in draw(st.lists(st.tuples(st.sampled_from(kinds), names), max_size=2,
                                    unique=True)):
        draw(body(block.child(kind, name), depth - 1))
    return block


@st.composite
def trees(draw):
    return draw(body(new_root(), 2, top=True))


@SETTINGS
@given(trees())
def test_parse_of_written_tree_is_the_same_tree(tree):
    text = write_tree(tree)
    doc = parse_text(text, "w.mln")
    assert doc.root.structure() == tree.structure()
    assert write_tree(doc.root) == text


@SETTINGS
@given(st.lists(line_words, min_size=1, max_size=6))
def test_written_lines_need_escapes_and_come_back(lines):
    root = new_root()
    startup = root.child("host", "h").child("startup")
    for ws in lines:
        startup.add_line(ws)
    doc = parse_text(write_tree(root), "w.mln")
    assert doc.hosts()["h"].block("startup").line_texts() == [" ".join(ws) for ws in lines]


@SETTINGS
@given(st.text(alphabet=string.ascii_letters + " \t\u00a0\u2028\x0b\x0c\r=$.-", max_size=30),
       st.integers(min_value=0, max_value=30))
def test_escaping_an_ordinary_character_changes_nothing(text, at):
    ordinary = [i for i, c in enumerate(text) if c.isalnum()]
    assume(ordinary)
    i = ordinary[at % len(ordinary)]
    escaped = text[:i] + "\\" + text[i:]
    assert [w for _, w, _ in tokenize(escaped, "f")] == [w for _, w, _ in tokenize(text, "f")]


# ---------------------------------------------------------------------------------------
# robustness: random and mutated texts
# ---------------------------------------------------------------------------------------

EXAMPLE_TEXTS = [p.read_text() for p in sorted(EXAMPLES.glob("*.mln"))]
SPECIAL = list("{};#\\$ \n") + ["\t", "$[", "\\$", "#include ", "}\n", "{\n"]
RANDOM_WORDS = ["host", "switch", "superclass", "global", "network", "eth0", "project", "memory",
                "512M", "superclass basic", "autoenum", "numhosts", "address auto", "$x = 1",
                "net 10.0.0.0", "service_hosts", "all", "lan", "xen", "dhcp", "#include servers.txt",
                "$group", "$[mem]M", "users", "startup", "=", "0", "99999999999999999999", "é", "\x00",
                "\xff", "\u2028"]


@st.composite
def mutated_example(draw):
    text = draw(st.sampled_from(EXAMPLE_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "word", "delete", "duplicate", "cut"]))
        i = draw(st.integers(0, max(0, len(text) - 1)))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 20)):]
        elif op == "duplicate":
            j = i + draw(st.integers(1, 60))
            text = text[:j] + text[i:j] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(SPECIAL)) + text[i:]
        elif op == "word":
            text = text[:i] + draw(st.sampled_from(RANDOM_WORDS)) + " " + text[i:]
        else:
            text = text[:max(i, len(text) // 2)]
    return text


random_texts = st.lists(st.sampled_from(SPECIAL + RANDOM_WORDS + list("abc \n")), max_size=60).map("".join)
project_texts = st.one_of(mutated_example(), mutated_example(), random_texts)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    for p in EXAMPLES.iterdir():
        shutil.copy(p, d / p.name)
    return d


@SETTINGS
@given(project_texts)
def test_parser_and_model_fail_only_with_positioned_errors(workdir, text):
    ctx = context()
    try:
        doc = parse_text(text, "fuzz.mln", cwd=str(workdir))
    except MlnError as e:
        assert isinstance(e.where, Pos), e
        return
    try:
        ctx.pm.hook.mln_post_parse(doc=doc, ctx=ctx)
        loaded = build_model(doc, ctx, fragment_ok=True)
    except MlnError as e:     # pragma: no cover - the model collects problems instead
        pytest.fail(f"build_model raised instead of reporting: {e}")
    for p in loaded.problems.items:
        assert p.severity in ("error", "warning")
        assert p.where is not None, p
    assert loaded.project is None or all(h.name for h in loaded.project.hosts.values())


@SETTINGS
@given(project_texts, st.lists(st.tuples(st.integers(0, 10**4), st.binary(min_size=1, max_size=2)),
                               max_size=2))
def test_check_exits_0_or_1_with_messages(workdir, text, raw_bytes):
    data = text.encode()
    for i, b in raw_bytes:      # possibly not UTF-8 any more
        i %= len(data) + 1
        data = data[:i] + b + data[i:]
    path = workdir / "fuzz.mln"
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", "-f", str(path)])
    err = err.getvalue()
    assert code in (0, 1), err
    assert "internal error" not in err and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"{path}: ") and ("0 errors" in last) == (code == 0), err
    if code == 1:
        assert ": error: " in err


@SETTINGS
@given(project_texts)
def test_show_and_parse_never_crash(workdir, text):
    path = workdir / "fuzz2.mln"
    path.write_text(text)
    for argv in (["show", "-f", str(path)], ["parse", "-f", str(path)],
                 ["parse", "-f", str(path), "-H", "/host/node01"]):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
        assert code in (0, 1), err.getvalue()
        assert "internal error" not in err.getvalue()
        if code == 1:
            assert err.getvalue().startswith("mln: error: ") or ": error: " in err.getvalue()
