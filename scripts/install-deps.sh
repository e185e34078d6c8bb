#!/usr/bin/env bash
# Install what mln and its tests need on a fresh Debian 12 machine (run as root).
# QEMU (TCG guests, qcow2, qemu-storage-daemon), User-Mode Linux and uml_mconsole,
# vde_switch, libvdeplug-slirp (slirp interfaces of UML guests), e2fsprogs/e2tools/FUSE
# for editing images without mounting, busybox and kmod/xz/cpio for the test template,
# iproute2/ping for switches, openssl for hashes,
# patchelf for a UML newer than the distribution's (mln_backends/install-uml.sh), graphviz
# for mln graph --format svg.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt_packages=(
  qemu-system-x86 qemu-utils user-mode-linux uml-utilities vde2 libvdeplug-slirp
  e2fsprogs e2tools fuse3 busybox-static kmod xz-utils cpio
  iproute2 iputils-ping openssl procps psmisc lvm2 debootstrap openssh-client openssh-server
  xen-utils-4.17 patchelf graphviz
  qemu-block-extra nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils tgt
  libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu python3-libvirt
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# setuptools and wheel: tests/contrib builds the plugin kit's packages without build isolation
python3 -m pip install -q --disable-pip-version-check -e ".[test]" setuptools wheel
# A UML that boots on this CPU: the distribution's where it can (it cannot on Intel CPUs with
# AMX), else a newer one from Debian's archive under /opt/mln/uml, set as default_kernel in
# /etc/mln/mln.conf. --always installs the newer one in any case: the tests run both.
bash mln_backends/install-uml.sh --always
