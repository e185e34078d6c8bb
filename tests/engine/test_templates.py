"""The template registry: register, list, versioned names, errors."""
from __future__ import annotations

import tarfile

import pytest

from mln_core.errors import MlnError
from mln_core.templates import TemplateRegistry


def _image(path, size=2**20):
    path.write_bytes(b"\0" * size)
    return path


def test_register_list_and_versions(tmp_path):
    reg = TemplateRegistry(str(tmp_path / "templates"))
    for v in ("1.2", "1.10", "1.9"):
        reg.register(str(_image(tmp_path / f"deb-V{v}.ext4")), message=f"version {v}")
    reg.register(str(_image(tmp_path / "other.ext4", 3 * 2**20)))
    assert sorted(reg.entries()) == ["deb-V1.10.ext4", "deb-V1.2.ext4", "deb-V1.9.ext4", "other.ext4"]
    assert reg.resolve("deb.ext4").name == "deb-V1.10.ext4"     # the highest version, numerically
    assert reg.resolve("deb-V1.2.ext4").name == "deb-V1.2.ext4"  # an exact name wins
    assert reg.resolve("other.ext4").size_mb == 3
    text = (tmp_path / "templates" / "templates.list").read_text()
    assert 'deb-V1.9.ext4 deb-V1.9.ext4 1MB - \'version 1.9\'' in text


def test_reregistering_replaces_the_entry(tmp_path):
    reg = TemplateRegistry(str(tmp_path / "t"))
    reg.register(str(_image(tmp_path / "a.ext4")), message="old")
    reg.register(str(_image(tmp_path / "a.ext4", 2 * 2**20)), message="new")
    assert len(reg.entries()) == 1 and reg.entries()["a.ext4"].message == "new"


def test_unknown_template_lists_registered(tmp_path):
    reg = TemplateRegistry(str(tmp_path / "t"))
    reg.register(str(_image(tmp_path / "a.ext4")))
    with pytest.raises(MlnError, match=r"host x: unknown template 'b.ext4' \(registered in .*: a.ext4\)"):
        reg.resolve("b.ext4", "host x")


def test_unregistered_file_in_the_directory_is_used_literally(tmp_path):
    reg = TemplateRegistry(str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    _image(tmp_path / "t" / "plain.img")
    assert reg.resolve("plain.img").path == str(tmp_path / "t" / "plain.img")


def test_tarball_is_unpacked(tmp_path):
    img = _image(tmp_path / "inner.ext4")
    tgz = tmp_path / "pack.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(img, arcname="inner.ext4")
    t = TemplateRegistry(str(tmp_path / "t")).register(str(tgz), name="packed.ext4")
    assert t.real_name == "inner.ext4" and t.compression == "gzip"
    assert (tmp_path / "t" / "inner.ext4").read_bytes() == img.read_bytes()


def test_register_errors(tmp_path):
    reg = TemplateRegistry(str(tmp_path / "t"))
    with pytest.raises(MlnError, match="no such template file"):
        reg.register(str(tmp_path / "missing.ext4"))
    with pytest.raises(MlnError, match="no such kernel file"):
        reg.register(str(_image(tmp_path / "a.ext4")), kernel=str(tmp_path / "nokernel"))


def test_cli_register_and_list(mln_plain, tmp_path):
    img = _image(tmp_path / "cli.ext4")
    r = mln_plain.mln("rt", "-t", str(img), "-m", "from the CLI")
    assert r.returncode == 0 and "registered cli.ext4" in r.stdout
    r = mln_plain.mln("list_templates")
    assert r.stdout.split()[:4] == ["cli.ext4", "cli.ext4", "1", "MB"] and "from the CLI" in r.stdout
