"""``mln upgrade`` of a running project of UML and QEMU guests on bridge switches: what it
does live (a QEMU interface moved to another switch, a NIC hot-plugged, memory given up
through the balloon) and what it restarts, with the plan saying so beforehand."""
from __future__ import annotations

import json
import re
import time

import pytest

pytestmark = pytest.mark.guests

HEAD = """global {{ project {project} }}
superclass node {{
    template busybox.ext4
    memory 64M
    startup {{
        echo "MLN-CHECK hostname $(hostname) mem $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
        for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
        do
        ping -c 1 -W 2 $peer > /dev/null && break
        done
        ping -c 2 $peer && echo "MLN-CHECK ping $peer ok"
    }}
}}
"""


def switch(name: str) -> str:
    return f"switch {name} {{\n    type bridge\n}}\n"


def host(name: str, hv: str, peer: str, nets: list[tuple[str, str]], extra: str = "") -> str:
    out = f"host {name} {{\n    superclass node\n    {hv}\n    $peer = {peer}\n{extra}"
    for n, (sw, addr) in enumerate(nets):
        out += (f"    network eth{n} {{\n        switch {sw}\n        address {addr}\n"
                f"        netmask 255.255.255.0\n    }}\n")
    return out + "}\n"


def pid(env, proj: str, h: str) -> int:
    return int((env.projects / proj / "hosts" / h / "pid").read_text())


def say(env, proj: str, h: str, command: str, mark: str, timeout: float = 90) -> str:
    """Run ``command`` in the guest's console; wait until its console shows ``mark``."""
    env.mln("console", "-p", proj, "-h", h, input=f"\n{command}\n", timeout=120)
    return env.wait_console(proj, h, mark, timeout=timeout)


def boots(env, proj: str, h: str) -> int:
    return env.console(proj, h).count(f"MLN-CHECK hostname {h} ")


def test_running_mixed_project_one_upgrade(mln_env):
    env = mln_env
    old = (HEAD.format(project="mix") + switch("lan") + switch("lan2")
           + host("a", "uml", "10.0.1.2", [("lan", "10.0.1.1")])
           + host("b", "uml", "10.0.1.1", [("lan", "10.0.1.2")])
           + host("c", "uml", "10.0.2.3", [("lan2", "10.0.2.3")])
           + host("q", "qemu", "10.0.1.1", [("lan", "10.0.1.9")], extra="    memory 128M\n"))
    new = (HEAD.format(project="mix") + switch("lan") + switch("lan2") + switch("lan3")
           + host("a", "uml", "10.0.1.2", [("lan", "10.0.1.1")])
           + host("b", "uml", "10.0.1.1", [("lan", "10.0.1.2")], extra="    memory 96M\n")
           + host("q", "qemu", "10.0.1.1", [("lan2", "10.0.1.9")], extra="    memory 128M\n")
           + host("d", "uml", "10.0.1.9", [("lan2", "10.0.1.4"), ("lan3", "10.0.3.4")]))
    env.write("mix.mln", old)
    env.write("mix2.mln", new)
    assert env.mln("build", "-f", "mix.mln").returncode == 0
    r = env.mln("start", "-p", "mix")
    assert r.returncode == 0, r.output
    env.wait_console("mix", "q", r"MLN-CHECK ping 10\.0\.1\.1 ok", timeout=180)
    for h, peer in (("a", "10.0.1.2"), ("b", "10.0.1.1"), ("c", "10.0.2.3")):
        env.wait_console("mix", h, rf"MLN-CHECK ping {re.escape(peer)} ok")
    pids = {h: pid(env, "mix", h) for h in "abcq"}

    # the plan, as data; nothing changes
    r = env.mln("upgrade", "-f", "mix2.mln", "-s", "--format", "json")
    assert r.returncode == 0, r.output
    plan = json.loads(r.stdout)
    parts = {k: sorted(x.get("host") or "switch " + x["switch"] for x in plan[k])
             for k in ("added", "removed", "rebuilt", "restarted", "reconfigured_live", "untouched")}
    assert parts == {"added": ["d", "switch lan3"], "removed": ["c"], "rebuilt": [], "restarted": ["b"],
                     "reconfigured_live": ["q"], "untouched": ["a", "switch lan", "switch lan2"]}
    q = plan["reconfigured_live"][0]
    assert [c["kind"] for c in q["changes"]] == ["interface_moved"]
    assert q["changes"][0]["old"] == "lan" and q["changes"][0]["new"] == "lan2"
    assert "live" in q["reasons"][0]
    assert plan["restarted"][0]["changes"][0]["kind"] == "memory"
    assert {h: pid(env, "mix", h) for h in "abcq"} == pids
    assert (env.projects / "mix" / "version").read_text().strip() == "1"

    r = env.mln("upgrade", "-f", "mix2.mln", "-r")
    assert r.returncode == 0, r.output
    # a: untouched, same process; q: same QEMU, not rebooted
    assert pid(env, "mix", "a") == pids["a"]
    assert pid(env, "mix", "q") == pids["q"] and boots(env, "mix", "q") == 1
    # d: new, on lan2 (where q now is) and lan3: its startup pings q's moved interface
    env.wait_console("mix", "d", r"MLN-CHECK ping 10\.0\.1\.9 ok")
    # q reaches lan2's peer from inside, still in its first boot
    say(env, "mix", "q", "ping -c 2 10.0.1.4 && echo MLN-CHECK q-lan2 ok", r"MLN-CHECK q-lan2 ok")
    assert boots(env, "mix", "q") == 1
    # b: restarted with more memory
    log_b = env.wait_console("mix", "b", r"(MLN-CHECK hostname b mem \d+[\s\S]*){2}")
    mems = [int(m) for m in re.findall(r"MLN-CHECK hostname b mem (\d+)", log_b)]
    assert mems[-1] > mems[0] + 20000, mems
    # c: gone with its disk
    assert not (env.projects / "mix" / "images" / "c").exists()
    assert not any(f"{env.projects}/mix/images/c" in p for p in env.processes())
    assert env.mln("stop", "-p", "mix").returncode == 0


def test_qemu_guest_gains_an_interface_and_gives_up_memory_live(mln_env):
    env = mln_env
    old = (HEAD.format(project="hot") + switch("lan") + switch("lan2")
           + host("q", "qemu", "10.0.1.2", [("lan", "10.0.1.1")], extra="    memory 256M\n")
           + host("p", "uml", "10.0.1.1", [("lan", "10.0.1.2"), ("lan2", "10.0.2.2")]))
    new = old.replace('    memory 256M\n', '    memory 192M\n').replace(
        '        switch lan\n        address 10.0.1.1\n        netmask 255.255.255.0\n    }\n',
        '        switch lan\n        address 10.0.1.1\n        netmask 255.255.255.0\n    }\n'
        '    network eth1 {\n        switch lan2\n        address 10.0.2.1\n        netmask 255.255.255.0\n    }\n', 1)
    assert new.count("eth1") == 2
    env.write("hot.mln", old)
    env.write("hot2.mln", new)
    assert env.mln("build", "-f", "hot.mln").returncode == 0
    assert env.mln("start", "-p", "hot").returncode == 0
    log = env.wait_console("hot", "q", r"MLN-CHECK ping 10\.0\.1\.2 ok", timeout=180)
    mem_before = int(re.search(r"MLN-CHECK hostname q mem (\d+)", log).group(1))
    qpid = pid(env, "hot", "q")

    r = env.mln("upgrade", "-f", "hot2.mln", "-s", "--format", "json")
    plan = json.loads(r.stdout)
    assert [x["host"] for x in plan["reconfigured_live"]] == ["q"], r.stdout
    assert sorted(c["kind"] for c in plan["reconfigured_live"][0]["changes"]) == ["interface_added", "memory"]
    r = env.mln("upgrade", "-f", "hot2.mln", "-r")
    assert r.returncode == 0, r.output
    assert pid(env, "hot", "q") == qpid and boots(env, "hot", "q") == 1

    def check(tag: str) -> None:
        text = say(env, "hot", "q",
                   f"ping -c 2 10.0.2.2 && echo MLN-CHECK {tag} eth1 ok; "
                   f"echo MLN-CHECK {tag} mem $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)",
                   rf"MLN-CHECK {tag} mem \d+")
        assert f"MLN-CHECK {tag} eth1 ok" in text, text[-2000:]
        mem = int(re.search(rf"MLN-CHECK {tag} mem (\d+)", text).group(1))
        assert mem < mem_before - 40000, (mem_before, mem)

    check("live")
    # saved and resumed: the hot-plugged NIC and the smaller memory come back, no reboot
    r = env.mln("stop", "-S", "-p", "hot", "-h", "q")
    assert r.returncode == 0, r.output
    r = env.mln("start", "-p", "hot", "-h", "q")
    assert r.returncode == 0, r.output
    time.sleep(1)
    check("resumed")
    assert boots(env, "hot", "q") == 1
    # a cold start: the guest's files got eth1 (written at this start), memory as configured
    assert env.mln("stop", "-p", "hot", "-h", "q").returncode == 0
    r = env.mln("start", "-p", "hot", "-h", "q")
    assert r.returncode == 0 and "guest files up to date" in r.stderr, r.output
    env.wait_console("hot", "q", r"MLN-CHECK ping 10\.0\.1\.2 ok", timeout=180)   # a fresh console log
    check("cold")
    assert env.mln("stop", "-p", "hot").returncode == 0
