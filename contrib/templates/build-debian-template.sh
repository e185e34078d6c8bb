#!/bin/bash
# Build a small, generic Debian 12 (bookworm) template with an SSH server and Apache.
#
# Usage: contrib/templates/build-debian-template.sh [--force] [OUTDIR]
#        (default OUTDIR=/var/cache/mln/debian-template)
# Env:   MLN_DEBIAN_MIRROR  Debian mirror (default: the bookworm mirror configured in
#                           /etc/apt/sources.list*, else http://deb.debian.org/debian)
#        MLN_DEBIAN_SIZE    filesystem size (default 1G; the image is sparse)
#
# Produces in OUTDIR:
#   debian.ext4  ext4 root filesystem: debootstrap --variant=minbase bookworm plus
#                systemd-sysv udev dbus ifupdown iproute2 openssh-server apache2 (and a
#                DHCP client, ping, procps, netbase). Generic: no SSH host keys (a
#                oneshot unit runs "ssh-keygen -A" before ssh.service at first boot),
#                empty /etc/machine-id, /etc/network/interfaces with "auto lo" only,
#                interfaces keep their kernel names (eth0...: udev's predictable
#                names are off), root locked, no apt lists.
#   manifest     shell-sourceable KEY=value lines
#   cache/       the downloaded .deb files (debootstrap --cache-dir), for --force rebuilds
#
# The image has no kernel and no /lib/modules: boot it with the busybox test template's
# vmlinux and initrd.gz (contrib/templates/build-test-template.sh), whose initrd loads
# the virtio, ext4, button and evdev modules and switch_roots into /dev/vda:
#
#   mln register_template -t OUTDIR/debian.ext4 \
#       --kernel /var/cache/mln/test-template/vmlinux --initrd /var/cache/mln/test-template/initrd.gz
#
# Idempotent: an existing debian.ext4 is kept unless --force is given. Needs root and
# debootstrap; nothing is installed on this machine and no daemon is started.
set -euo pipefail

FORCE=0
OUTDIR=
for arg in "$@"; do
    case "$arg" in
        --force|-f) FORCE=1 ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        -*) echo "unknown option: $arg" >&2; exit 2 ;;
        *) OUTDIR=$arg ;;
    esac
done
OUTDIR=${OUTDIR:-/var/cache/mln/debian-template}
SUITE=bookworm
SIZE=${MLN_DEBIAN_SIZE:-1G}
PACKAGES=systemd-sysv,udev,dbus,ifupdown,iproute2,isc-dhcp-client,netbase,procps,iputils-ping,openssh-server,apache2

log() { echo "build-debian-template: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
IMG=$OUTDIR/debian.ext4
MANIFEST=$OUTDIR/manifest

if [ "$FORCE" = 0 ] && [ -s "$IMG" ] && [ -s "$MANIFEST" ]; then
    log "up to date: $IMG (use --force to rebuild)"
    echo "ROOTFS=$IMG"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap)"
for tool in debootstrap mkfs.ext4 chroot; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install debootstrap e2fsprogs)"
done

# The mirror: the one this machine's apt uses for bookworm, so that the build works where
# only the configured Debian mirror is reachable.
find_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: the URIs of the paragraph whose Suites include bookworm (not -security)
        uri=$(awk -v s="$SUITE" '
            /^[ \t]*$/ { if (u != "" && ok) { print u; exit } u = ""; ok = 0; next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
            END { if (u != "" && ok) print u }' "$f" | head -n1)
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk -v s="$SUITE" '$1 == "deb" {
                for (i = 2; i <= NF; i++) if ($i !~ /^\[/) break
                if ($(i + 1) == s) { print $i; exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    echo http://deb.debian.org/debian
}
MIRROR=${MLN_DEBIAN_MIRROR:-$(find_mirror)}

WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
ROOT=$WORK/rootfs

cleanup() {
    local p mnt
    # processes left in the chroot (only ever ours: the chroot is new)
    for p in /proc/[0-9]*; do
        if [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ]; then
            kill -9 "${p#/proc/}" 2>/dev/null || true
        fi
    done
    # mounts debootstrap may have left (proc, sys, dev/pts), deepest first
    awk -v r="$ROOT" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done
    if awk -v r="$ROOT" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        log "WARNING: something is still mounted below $ROOT; leaving $WORK in place"
    else
        rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUTDIR/cache"
T0=$(date +%s)
log "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
if ! debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$OUTDIR/cache" \
        "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOT/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi
T1=$(date +%s)
log "debootstrap took $((T1 - T0)) s"

# ---------------------------------------------------------------- make it generic
# SSH host keys: none in the template; generated at first boot, before sshd starts.
rm -f "$ROOT"/etc/ssh/ssh_host_*
cat >"$ROOT/etc/systemd/system/mln-ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Generate the SSH host keys (mln template: first boot)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=ssh.service
EOF
mkdir -p "$ROOT/etc/systemd/system/ssh.service.wants"
ln -sfn ../mln-ssh-hostkeys.service "$ROOT/etc/systemd/system/ssh.service.wants/mln-ssh-hostkeys.service"
# (the links are absolute, so they point into this machine's /: test the links themselves)
for unit in ssh.service apache2.service; do
    [ -L "$ROOT/etc/systemd/system/multi-user.target.wants/$unit" ] \
        || die "$unit is not enabled in the rootfs"
done

# Identity: empty machine-id (systemd makes one at first boot), neutral hostname.
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
echo debian >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n' \
    >"$ROOT/etc/hosts"

# Network: loopback only; mln writes the interfaces of each host, named eth0, eth1...
# as in the project file: turn off udev's predictable names (ens3, enp0s3).
printf 'auto lo\niface lo inet loopback\n' >"$ROOT/etc/network/interfaces"
mkdir -p "$ROOT/etc/systemd/network"
ln -sfn /dev/null "$ROOT/etc/systemd/network/99-default.link"
rm -f "$ROOT/etc/resolv.conf"
: >"$ROOT/etc/resolv.conf"

# Disks: mln writes /etc/fstab for the hypervisor's device names.
printf '# <file system> <mount point> <type> <options> <dump> <pass>\n# written by mln for each host\n' \
    >"$ROOT/etc/fstab"

# root: locked (log in with a key: mln's sshkey plugin, or root_passwd).
chroot "$ROOT" passwd -l root >/dev/null
# Debian's default sshd_config already allows root with a key (prohibit-password).

# Keep it small: no package lists, no downloaded .debs, no logs from the build.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin
find "$ROOT/var/cache/apt/archives" -name '*.deb' -delete 2>/dev/null || true
find "$ROOT/var/log" -type f -exec truncate -s 0 {} + 2>/dev/null || true
rm -rf "$ROOT/debootstrap" "$ROOT"/tmp/* "$ROOT"/var/tmp/*

# Nothing of the build may still be mounted when the tree is copied.
if awk -v r="$ROOT" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    die "debootstrap left filesystems mounted below $ROOT"
fi

# ---------------------------------------------------------------- the image
log "mkfs.ext4 -d ($SIZE, sparse)"
mkfs.ext4 -q -F -L mln-debian -E root_owner=0:0 -d "$ROOT" "$WORK/debian.ext4" "$SIZE" >/dev/null
chmod 0644 "$WORK/debian.ext4"
mv -f "$WORK/debian.ext4" "$IMG"
{
    echo "# generated by build-debian-template.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'SUITE=%q\n' "$SUITE"
    printf 'MIRROR=%q\n' "$MIRROR"
    printf 'PACKAGES=%q\n' "$PACKAGES"
    printf 'ROOTFS=%q\n' "$IMG"
    printf 'BUILD_SECONDS=%q\n' "$(($(date +%s) - T0))"
} >"$WORK/manifest"
mv -f "$WORK/manifest" "$MANIFEST"
log "done in $(($(date +%s) - T0)) s: $IMG"
echo "ROOTFS=$IMG"
