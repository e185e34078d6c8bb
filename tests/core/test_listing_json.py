"""``--format json`` of the listing commands: list, status, list_templates, plugins, doctor
(each a stable, documented shape; docs/commands.md)."""
from __future__ import annotations

import json


def _projects(tmp_path, isolated_env, *names):
    projects, templates = tmp_path / "projects", tmp_path / "templates"
    projects.mkdir()
    templates.mkdir()
    isolated_env.write_text(isolated_env.read_text() + f"\nprojects {projects}\ntemplates {templates}\n")
    for name in names:
        (projects / name).mkdir()
        (projects / name / f"{name}.mln").write_text(f"global {{ project {name} }}\nswitch lan {{\n}}\n")
        (projects / name / "version").write_text("3\n")
    return projects, templates


def test_list_json(mln, tmp_path, isolated_env):
    projects, _ = _projects(tmp_path, isolated_env, "web", "db")
    code, out, _ = mln("list", "--format", "json")
    assert code == 0
    assert json.loads(out) == [{"project": "db", "directory": str(projects / "db"), "version": 3},
                               {"project": "web", "directory": str(projects / "web"), "version": 3}]
    code, out, _ = mln("list")
    assert out.splitlines() == [str(projects / "db"), str(projects / "web")]


def test_list_json_without_projects_is_an_empty_list(mln, tmp_path, isolated_env):
    _projects(tmp_path, isolated_env)
    code, out, _ = mln("list", "--format", "json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = mln("status", "--format", "json")
    assert code == 0 and json.loads(out) == []


def test_status_json(mln, tmp_path, isolated_env):
    _projects(tmp_path, isolated_env, "web")
    code, out, _ = mln("status", "-p", "web", "--format", "json")
    assert code == 1                                      # not everything is up
    assert json.loads(out) == [{"project": "web", "kind": "switch", "name": "lan", "state": "down",
                                "detail": ""}]


def test_list_templates_json(mln, tmp_path, isolated_env):
    _, templates = _projects(tmp_path, isolated_env)
    (templates / "templates.list").write_text("busybox.ext4 busybox-V1.2.ext4 8MB - 'small busybox'\n"
                                              "deb.ext4 deb-V1.0.ext4 2048MB gzip 'Debian'\n")
    (templates / "busybox-V1.2.ext4").write_bytes(b"")
    (templates / "busybox-V1.2.ext4.kernel").write_bytes(b"")
    code, out, _ = mln("list_templates", "--format", "json")
    assert code == 0
    assert json.loads(out) == [
        {"name": "busybox.ext4", "file": "busybox-V1.2.ext4", "size_mb": 8, "compression": None,
         "message": "small busybox", "kernel": True, "initrd": False},
        {"name": "deb.ext4", "file": "deb-V1.0.ext4", "size_mb": 2048, "compression": "gzip",
         "message": "Debian", "kernel": False, "initrd": False}]


def test_plugins_and_doctor_json_shapes(mln):
    code, out, _ = mln("plugins", "--format", "json")
    data = json.loads(out)
    assert code == 0 and set(data) == {"plugins", "failed", "disabled"}
    file_plugin = next(p for p in data["plugins"] if p["name"] == "file")
    assert "mln_export_disk" in file_plugin["hooks"] and "mln_import_disk" in file_plugin["hooks"]
    code, out, _ = mln("doctor", "--format", "json")
    data = json.loads(out)
    assert set(data) == {"checks", "default_hypervisor_ok", "problem"}
    assert code == (0 if data["default_hypervisor_ok"] else 1)
    for check in data["checks"]:
        assert {"plugin", "name", "ok", "detail", "remedy"} <= set(check)
