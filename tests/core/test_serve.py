"""``mln serve``, what another server's mln runs here: one request from standard input, or
(``--many``, as the ssh transport keeps it for a whole command) one per line, each answered
in turn; a bad request is answered with an error and the next still served."""
from __future__ import annotations

import json
import subprocess
import sys


def serve(env, text: str, *options: str) -> tuple[list[dict], int]:
    p = subprocess.run([sys.executable, "-m", "mln_core.cli", "serve", *options], input=text, env=env.env,
                       capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    return [x for x in lines if "alive" not in x], p.returncode


def test_one_request_from_standard_input(mln_plain):
    answers, code = serve(mln_plain, json.dumps({"verb": "ping"}))
    assert code == 0
    assert answers[-1]["ok"] and answers[-1]["result"]["version"]


def test_many_requests_each_answered_in_turn_a_bad_one_too(mln_plain):
    requests = [{"verb": "ping"}, "not json", {"verb": "nosuch"}, {"verb": "status", "project": "nothere"},
                {"verb": "status", "project": "../x"}, {"verb": "ping"}]
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    answers, code = serve(mln_plain, text, "--many")
    assert [a["ok"] for a in answers] == [True, False, False, True, False, True]
    assert "not JSON" in answers[1]["error"]
    assert "unknown request 'nosuch'" in answers[2]["error"]
    assert answers[3]["result"] == {"rows": []}
    assert "project" in answers[4]["error"]
    assert answers[5]["result"]["version"] == answers[0]["result"]["version"]



def test_many_what_a_request_runs_reads_no_request_and_writes_no_answer(mln_plain):
    """A hook script run by one request (``beforeProjectStart``: reads its standard input,
    prints to its standard output) neither swallows the next request nor mixes its output
    into the answers."""
    path = mln_plain.write("hs.mln", "global {\n    project hs\n    beforeProjectStart {\n"
                                     "        cat > stdin.txt\n        echo NOT-AN-ANSWER\n    }\n}\n")
    r = mln_plain.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    text = json.dumps({"verb": "start", "project": "hs"}) + "\n" + json.dumps({"verb": "ping"}) + "\n"
    p = subprocess.run([sys.executable, "-m", "mln_core.cli", "serve", "--many"], input=text, env=mln_plain.env,
                       capture_output=True, text=True, timeout=60)
    answers = [json.loads(line) for line in p.stdout.splitlines()]      # (only JSON lines)
    answers = [a for a in answers if "ok" in a]
    assert [a["ok"] for a in answers] == [True, True], p.stdout + p.stderr
    assert answers[1]["result"]["version"]
    assert (mln_plain.projects / "hs" / "stdin.txt").read_text() == ""
    assert "NOT-AN-ANSWER" not in p.stdout and "NOT-AN-ANSWER" in p.stderr
