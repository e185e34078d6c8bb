"""End to end on a real Debian guest: sshkey and apache, checked by logging in with Fabric.

Builds (once per machine, cached) the Debian template of
contrib/templates/build-debian-template.sh, boots one QEMU (TCG) guest from it with the
busybox test template's kernel and initrd, on user-mode networking (``slirp restrict``)
with SSH and HTTP forwarded to ports of 127.0.0.1, and logs in with the key that the
sshkey plugin installed. Network traffic stays on loopback.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.guests

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_DIR = Path(os.environ.get("MLN_DEBIAN_TEMPLATE_DIR", "/var/cache/mln/debian-template"))
BOOT_TIMEOUT = 150          # TCG: 12-25 s of boot, host keys, sometimes more on a busy machine


@pytest.fixture(scope="session")
def debian_template() -> Path:
    """The Debian template image (built once with debootstrap, then cached)."""
    if os.geteuid() != 0:
        pytest.skip("building the Debian template needs root")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (scripts/install-deps.sh)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    try:
        script = ROOT / "contrib/templates/build-debian-template.sh"
        r = subprocess.run(["bash", str(script), str(DEBIAN_DIR)],
                           capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL,
                           check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("building the Debian template took more than 30 minutes")
    if r.returncode != 0:
        pytest.skip(f"the Debian template could not be built (no Debian mirror?): {r.stderr[-1500:]}")
    return DEBIAN_DIR / "debian.ext4"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_ssh(port: int, timeout: float) -> float:
    """Wait until an SSH server greets on 127.0.0.1:port; return the seconds waited.

    QEMU's slirp accepts the connection at once and closes it while nothing listens in
    the guest, so only the server's banner counts."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.settimeout(5)
                if s.recv(64).startswith(b"SSH-"):
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"no SSH server on 127.0.0.1:{port} after {timeout} s")


PROJECT = """
global {{
    project deb
}}
host web {{
    hypervisor qemu
    memory 512M
    size 1G
    template debian.ext4
    sshkey {{
        root {pub}
    }}
    apache {{
        DocumentRoot /srv/www
    }}
    network eth0 {{
        slirp restrict
        hostfwd tcp:127.0.0.1:{ssh}-:22
        hostfwd tcp:127.0.0.1:{http}-:80
        address 10.0.2.15
        netmask 255.255.255.0
        gateway 10.0.2.2
    }}
}}
"""


def test_debian_guest_with_sshkey_and_apache(mln_env, debian_template, tmp_path):
    import fabric

    kernel_dir = Path(os.environ.get("MLN_TEST_TEMPLATE_DIR", "/var/cache/mln/test-template"))
    r = mln_env.mln("register_template", "-t", str(debian_template), "--kernel", str(kernel_dir / "vmlinux"),
                    "--initrd", str(kernel_dir / "initrd.gz"), "-m", "Debian 12 with ssh and apache")
    assert r.returncode == 0, r.output
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mln-test", "-f", str(key)],
                   check=True, stdin=subprocess.DEVNULL)
    ssh_port, http_port = free_port(), free_port()
    while http_port == ssh_port:
        http_port = free_port()
    path = mln_env.write("deb.mln", PROJECT.format(pub=f"{key}.pub", ssh=ssh_port, http=http_port))

    t0 = time.monotonic()
    r = mln_env.mln("build", "-f", str(path))
    assert r.returncode == 0, r.output
    t_build = time.monotonic() - t0
    r = mln_env.mln("start", "-p", "deb")
    assert r.returncode == 0, r.output
    t0 = time.monotonic()
    try:
        t_ssh = wait_for_ssh(ssh_port, BOOT_TIMEOUT)
    except TimeoutError as e:
        raise AssertionError(f"{e}; console:\n{mln_env.console('deb', 'web')[-4000:]}") from None

    conn = fabric.Connection("127.0.0.1", user="root", port=ssh_port,
                             connect_kwargs={"key_filename": str(key), "look_for_keys": False,
                                             "allow_agent": False, "timeout": 30})
    try:
        def run(cmd: str) -> str:
            return conn.run(cmd, hide=True, timeout=60, in_stream=False).stdout.strip()

        assert run("hostname") == "web"
        t_login = time.monotonic() - t0
        site = run("cat /etc/apache2/sites-enabled/000-default.conf")
        assert "DocumentRoot /srv/www" in site and "/var/www/html" not in site
        assert run("readlink /etc/apache2/sites-enabled/000-default.conf") == \
            "../sites-available/000-default.conf"
        assert run("stat -c '%a %U' /root/.ssh /root/.ssh/authorized_keys").splitlines() == \
            ["700 root", "600 root"]
        # Apache runs with the new document root and may serve it
        deadline = time.monotonic() + 60
        while run("systemctl is-active apache2 || true") != "active" and time.monotonic() < deadline:
            time.sleep(2)
        assert run("systemctl is-active apache2 || true") == "active", run("journalctl -u apache2 | tail")
        run("echo served-from-srv-www > /srv/www/index.html")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=30) as resp:
            assert resp.read().decode().strip() == "served-from-srv-www"
    finally:
        conn.close()
    print(f"\nDebian guest: build {t_build:.1f} s, ssh answered {t_ssh:.1f} s after 'mln start', "
          f"logged in after {t_login:.1f} s")

    t0 = time.monotonic()
    r = mln_env.mln("stop", "-p", "deb", "-w", "60")
    assert r.returncode == 0, r.output
    print(f"stopped in {time.monotonic() - t0:.1f} s: {r.stderr.strip()}")
    r = mln_env.mln("remove", "-f", "-p", "deb")
    assert r.returncode == 0, r.output
    assert not (mln_env.projects / "deb").exists()
