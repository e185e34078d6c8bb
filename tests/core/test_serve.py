"""``mln serve``, what another server's mln runs here: one request from standard input, or
(``--many``, as the ssh transport keeps it for a whole command) one per line, all carried
out at once, each answer with its request's ``id``; a bad request is answered with an error
and the others still served."""
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


def test_many_requests_each_answered_by_its_id_a_bad_one_too(mln_plain):
    requests = [{"verb": "ping", "id": 1}, "not json", {"verb": "nosuch", "id": 3},
                {"verb": "status", "project": "nothere", "id": 4}, {"verb": "status", "project": "../x", "id": 5},
                {"verb": "ping", "id": "six"}]
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    answers, code = serve(mln_plain, text, "--many")
    assert len(answers) == 6 and all("ok" in a for a in answers), answers
    assert code == 1                        # (not every request succeeded)
    by_id = {a.get("id"): a for a in answers}
    assert sorted(by_id, key=str) == sorted([1, None, 3, 4, 5, "six"], key=str), answers
    assert "not JSON" in by_id[None]["error"] and not by_id[None]["ok"]
    assert "unknown request 'nosuch'" in by_id[3]["error"]
    assert by_id[4]["ok"] and by_id[4]["result"] == {"rows": []}
    assert not by_id[5]["ok"] and "project" in by_id[5]["error"]
    assert by_id["six"]["result"]["version"] == by_id[1]["result"]["version"]


def test_many_what_a_request_runs_reads_no_request_and_writes_no_answer(mln_plain):
    """A hook script run by one request (``beforeProjectStart``: reads its standard input,
    prints to its standard output, takes its time) neither swallows the next request nor
    mixes its output into the answers, nor holds up the request sent after it."""
    path = mln_plain.write("hs.mln", "global {\n    project hs\n    beforeProjectStart {\n"
                                     "        cat > stdin.txt\n        echo NOT-AN-ANSWER\n        sleep 2\n"
                                     "    }\n}\n")
    r = mln_plain.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    text = json.dumps({"verb": "start", "project": "hs", "id": 1}) + "\n" + json.dumps({"verb": "ping", "id": 2})
    p = subprocess.run([sys.executable, "-m", "mln_core.cli", "serve", "--many"], input=text, env=mln_plain.env,
                       capture_output=True, text=True, timeout=60)
    answers = [json.loads(line) for line in p.stdout.splitlines()]      # (only JSON lines)
    answers = [a for a in answers if "ok" in a]
    assert [(a["id"], a["ok"]) for a in answers] == [(2, True), (1, True)], p.stdout + p.stderr
    assert p.returncode == 0
    assert answers[0]["result"]["version"]
    assert (mln_plain.projects / "hs" / "stdin.txt").read_text() == ""
    assert "NOT-AN-ANSWER" not in p.stdout and "NOT-AN-ANSWER" in p.stderr


def test_many_a_worker_killed_mid_request_gets_its_request_an_error_and_the_next_is_served(mln_plain):
    """The worker carrying out a request dies (killed, as by the OOM killer): that request is
    answered with an error naming it, and later requests are still carried out."""
    import os
    import signal
    import time
    path = mln_plain.write("slow.mln", "global {\n    project slow\n    beforeProjectStart {\n"
                                       "        sleep 58.123\n    }\n}\n")
    assert mln_plain.mln("build", "-f", str(path)).returncode == 0
    p = subprocess.Popen([sys.executable, "-m", "mln_core.cli", "serve", "--many"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=mln_plain.env, text=True)
    import threading
    watchdog = threading.Timer(60, p.kill)        # (no answer at all: it fails, it does not hang)
    watchdog.start()
    try:
        p.stdin.write(json.dumps({"verb": "start", "project": "slow", "id": "s"}) + "\n")
        p.stdin.flush()
        end = time.monotonic() + 30
        while not (workers := subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                             text=True).stdout.split()):
            assert time.monotonic() < end
            time.sleep(0.05)
        time.sleep(1)                       # (it is in the hook's sleep)
        os.kill(int(workers[0]), signal.SIGKILL)
        while "ok" not in (answer := json.loads(p.stdout.readline())):
            assert answer["id"] == "s"          # (its progress lines)
        assert answer["id"] == "s" and not answer["ok"], answer
        assert "'mln serve' ended (killed by signal 9) before it answered" in answer["error"]
        p.stdin.write(json.dumps({"verb": "ping", "id": "p"}) + "\n")
        p.stdin.close()
        answers = [json.loads(line) for line in p.stdout]
        assert [(a["id"], a["ok"]) for a in answers if "ok" in a] == [("p", True)], answers
        assert p.wait(30) == 1                 # (not every request succeeded)
    finally:
        watchdog.cancel()
        p.kill()
        p.wait()
        subprocess.run(["pkill", "-f", "sleep 58.123"], check=False)


def test_a_templates_sha256_is_remembered_beside_it_until_the_file_changes(tmp_path):
    from mln_core.serve import sha256_of, template_sha256
    image = tmp_path / "t.img"
    image.write_bytes(b"a" * 4096)
    first = template_sha256(str(image))
    assert first == sha256_of(str(image))
    note = tmp_path / ".t.img.sha256"
    assert note.read_text().split()[-1] == first
    note.write_text(note.read_text().replace(first, "0" * 64))      # it is not read again
    assert template_sha256(str(image)) == "0" * 64
    with open(image, "r+b") as f:                                   # same size, new content
        f.write(b"b")
    assert template_sha256(str(image)) == sha256_of(str(image)) != first
