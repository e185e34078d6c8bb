"""``mln doctor`` and the host check of ``mln check``: every plugin answers for itself,
a third party's hypervisor included; the exit code follows the default hypervisor."""
from __future__ import annotations

import json

from .test_plugins import site  # noqa: F401  (the fixture)

RACK_PLUGIN = '''
from mln_core import hookimpl

@hookimpl
def mln_register_keywords(registry):
    registry.hypervisor("rack", ("rack",), "a third party's hypervisor")

@hookimpl
def mln_doctor(ctx):
    return [{"name": "rackd", "ok": False, "hypervisor": "rack",
             "detail": "rackd is not running", "remedy": "start rackd"}]

@hookimpl
def mln_runnable(host, ctx):
    if host.hypervisor == "rack":
        return "rackd is not running; start rackd"
    return None
'''

BROKEN_PLUGIN = '''
from mln_core import hookimpl

@hookimpl
def mln_doctor(ctx):
    raise RuntimeError("probe exploded")
'''


def test_every_builtin_backend_answers(mln):
    code, out, err = mln("doctor", "--format", "json")
    report = json.loads(out)
    plugins = {c["plugin"] for c in report["checks"]}
    assert {"uml", "qemu", "xen", "vmware", "vde", "bridge", "file", "lvm"} <= plugins
    for c in report["checks"]:
        assert set(c) == {"plugin", "name", "ok", "detail", "remedy", "hypervisor"}
        assert c["detail"]
        assert bool(c["remedy"]) == (not c["ok"]), c      # a remedy exactly where something is missing
    hv = {c["hypervisor"] for c in report["checks"] if c["hypervisor"]}
    assert {"uml", "qemu", "xen", "vmware"} <= hv
    uml = next(c for c in report["checks"] if c["hypervisor"] == "uml")
    assert code == (0 if uml["ok"] else 1) and report["default_hypervisor_ok"] == uml["ok"]
    # the text form has one line per finding (plus remedies) and a verdict at the end
    code2, text, _ = mln("doctor")
    assert code2 == code
    assert sum(1 for line in text.splitlines() if line.split()[:1] and line.split()[0] in plugins) \
        == len(report["checks"])


def test_third_party_hypervisor_takes_part(mln, write, site, isolated_env):  # noqa: F811
    site("rackplug", {"rackplug_mod": RACK_PLUGIN}, {"rack": "rackplug_mod"})
    code, out, _ = mln("doctor")
    line = next(x for x in out.splitlines() if x.startswith("rack "))
    assert line.split()[:3] == ["rack", "NO", "rackd"] and "rackd is not running" in line
    assert "-> start rackd" in out
    # a default hypervisor that cannot run makes doctor fail
    isolated_env.write_text(isolated_env.read_text() + "default_hypervisor rack\n")
    code, out, _ = mln("doctor")
    assert code == 1
    assert out.splitlines()[-1] == "the default hypervisor 'rack' cannot run here: rackd is not running"
    # check warns about the hosts that cannot run here, once for all of them, at the first
    path = write("global { project p }\nhost a {\n rack\n}\nhost b {\n rack\n}\nhost c {\n rack\n}\n"
                 "host d {\n rack\n}\n")
    code, _, err = mln("check", "-f", path)
    assert code == 0
    assert f"{path}:2:1: warning: hosts a, b, c and 1 more: rackd is not running; start rackd" in err
    assert err.endswith("0 errors, 1 warning\n")


def test_no_plugin_for_the_default_hypervisor(mln, isolated_env):
    isolated_env.write_text(isolated_env.read_text() + "default_hypervisor nonesuch\n")
    code, out, _ = mln("doctor", "--format", "json")
    assert code == 1
    assert json.loads(out)["problem"] == "no installed plugin runs the default hypervisor 'nonesuch'"


def test_a_failing_check_is_reported_not_raised(mln, site):  # noqa: F811
    site("brokenplug", {"brokenplug_mod": BROKEN_PLUGIN}, {"broken": "brokenplug_mod"})
    code, out, err = mln("doctor", "--format", "json")
    [found] = [c for c in json.loads(out)["checks"] if c["plugin"] == "broken"]
    assert not found["ok"] and "RuntimeError: probe exploded" in found["detail"]
    assert "Traceback" not in err
