#!/bin/bash
# Build the small busybox test template used by mln's tests and smoke tests.
#
# Usage: contrib/templates/build-test-template.sh [--force] [OUTDIR]
#        (default OUTDIR=/var/cache/mln/test-template)
#
# Produces in OUTDIR:
#   busybox.ext4  generic busybox-static root filesystem (ext4, 64M sparse), used
#                 by both UML (/usr/bin/linux.uml) and QEMU (virtio-blk /dev/vda)
#   vmlinux       uncompressed Debian amd64 kernel (QEMU direct/PVH boot)
#   initrd.gz     busybox initramfs: loads virtio/ext4/net/console/balloon/button/
#                 evdev modules, mounts root= (default /dev/vda) and switch_roots
#                 to /sbin/init
#   manifest      shell-sourceable KEY=value lines
#   debs/         cached .deb files (busybox-static, linux-image-*-amd64)
#
# Idempotent: an output that already exists is not rebuilt unless --force is
# given.  Nothing is installed on the host; the kernel package is only
# downloaded (apt-get download) and unpacked into a temporary directory.
set -euo pipefail

FORCE=0
OUTDIR=
for arg in "$@"; do
    case "$arg" in
        --force|-f) FORCE=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "unknown option: $arg" >&2; exit 2 ;;
        *) OUTDIR=$arg ;;
    esac
done
OUTDIR=${OUTDIR:-/var/cache/mln/test-template}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
DEBS=$OUTDIR/debs
ROOTFS_IMG=$OUTDIR/busybox.ext4
KERNEL_IMG=$OUTDIR/vmlinux
INITRD_IMG=$OUTDIR/initrd.gz
MANIFEST=$OUTDIR/manifest
ROOTFS_SIZE=64M
# Raised whenever the root filesystem's contents change, so that a cached one is rebuilt.
ROOTFS_REVISION=2
KERNEL_APPEND="console=ttyS0 root=/dev/vda rw quiet"
UML_KERNEL=/usr/bin/linux.uml

# Modules loaded by the initrd, in this order (dependencies first).  The rootfs
# has no /lib/modules, so whatever the guest needs must be here: virtio_console
# for mln's channel (a virtio-serial port), virtio_balloon for memory lowered on
# a running QEMU guest.
INITRD_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev
virtio_pci virtio_blk crc32c_generic crc16 mbcache jbd2 ext4 failover
net_failover virtio_net virtio_console virtio_balloon button evdev"
# Raised whenever the initrd's contents change (INITRD_MODULES, its /init), so
# that a cached kernel and initrd are rebuilt.
INITRD_REVISION=2

log() { echo "build-test-template: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

print_outputs() {
    echo "ROOTFS=$ROOTFS_IMG"
    echo "KERNEL=$KERNEL_IMG"
    echo "INITRD=$INITRD_IMG"
    echo "MANIFEST=$MANIFEST"
}

rootfs_current() {
    [ -s "$ROOTFS_IMG" ] && [ -s "$MANIFEST" ] && grep -qx "ROOTFS_REVISION=$ROOTFS_REVISION" "$MANIFEST"
}

initrd_current() {
    [ -s "$KERNEL_IMG" ] && [ -s "$INITRD_IMG" ] && [ -s "$MANIFEST" ] \
        && grep -qx "INITRD_REVISION=$INITRD_REVISION" "$MANIFEST"
}

if [ "$FORCE" = 0 ] && rootfs_current && initrd_current; then
    log "up to date (use --force to rebuild)"
    print_outputs
    exit 0
fi

for tool in dpkg-deb mkfs.ext4 cpio gzip python3; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done

WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$DEBS"

APT_OPTS=()
[ "$(id -u)" = 0 ] && APT_OPTS=(-o APT::Sandbox::User=root)

# fetch_deb PACKAGE -> prints path of the cached .deb (downloads it if needed)
fetch_deb() {
    local pkg=$1 f
    f=$(ls -1 "$DEBS/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -z "$f" ]; then
        log "downloading $pkg"
        if ! (cd "$DEBS" && apt-get "${APT_OPTS[@]}" -q download "$pkg" >&2); then
            log "apt-get download $pkg failed"
            return 1
        fi
        f=$(ls -1 "$DEBS/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    fi
    [ -n "$f" ] || { log "no .deb for $pkg in $DEBS"; return 1; }
    echo "$f"
}

# ---------------------------------------------------------------- busybox
BUSYBOX=$WORK/busybox
get_busybox() {
    [ -x "$BUSYBOX" ] && return 0
    local deb
    if deb=$(fetch_deb busybox-static); then
        mkdir -p "$WORK/bbdeb"
        dpkg-deb -x "$deb" "$WORK/bbdeb"
        cp "$WORK/bbdeb/bin/busybox" "$BUSYBOX"
    elif dpkg -s busybox-static >/dev/null 2>&1 && [ -x /bin/busybox ]; then
        log "using the host's /bin/busybox (package busybox-static)"
        cp /bin/busybox "$BUSYBOX"
    else
        die "cannot get busybox-static"
    fi
    chmod 0755 "$BUSYBOX"
}

# populate_busybox DIR: /bin/busybox + applet symlinks
populate_busybox() {
    local dir=$1 applet
    mkdir -p "$dir/bin" "$dir/sbin" "$dir/usr/bin" "$dir/usr/sbin"
    install -m 0755 "$BUSYBOX" "$dir/bin/busybox"
    for applet in $("$BUSYBOX" --list-full); do
        # --list-full contains bin/busybox itself: never replace the binary
        case "$applet" in
            bin/busybox|linuxrc) continue ;;
        esac
        mkdir -p "$dir/$(dirname "$applet")"
        ln -sfn /bin/busybox "$dir/$applet"
    done
}

# ---------------------------------------------------------------- rootfs
build_rootfs() {
    log "building $ROOTFS_IMG"
    local R=$WORK/rootfs
    get_busybox
    mkdir -p "$R"
    populate_busybox "$R"
    mkdir -p "$R"/{proc,sys,dev,tmp,root,home,mnt,etc/init.d,etc/acpi/PWRF}
    chmod 1777 "$R/tmp"
    chmod 0700 "$R/root"

    cat >"$R/etc/inittab" <<'EOF'
# mln busybox test template.  The console is a root shell once Enter is
# pressed on it (mln console); until then nothing runs there.
::sysinit:/etc/init.d/rcS
::askfirst:-/bin/sh
::ctrlaltdel:/sbin/poweroff
::shutdown:/bin/echo "mln-guest: shutting down"
::shutdown:/bin/kill -TERM -1
::shutdown:/bin/usleep 300000
::shutdown:/bin/kill -KILL -1
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
::shutdown:/bin/sync
EOF

    # Base init script.  mln appends marked sections (network, startup) to
    # this file, so it must not exit early and must end with a newline.
    cat >"$R/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# mln busybox test template: base init script (sections appended by mln run
# after this part, in order).
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
grep -q ' /proc ' /proc/mounts 2>/dev/null || mount -t proc proc /proc
grep -q ' /sys ' /proc/mounts || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
mount -o remount,rw /
[ -s /etc/hostname ] && hostname -F /etc/hostname
ifconfig lo 127.0.0.1 netmask 255.0.0.0 up
# ACPI power button (QEMU system_powerdown) -> /etc/acpi/PWRF/00000080
if ls /dev/input/event* >/dev/null 2>&1; then
    acpid -l /tmp/acpid.log
fi
EOF
    chmod 0755 "$R/etc/init.d/rcS"

    cat >"$R/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
exec /sbin/poweroff
EOF
    chmod 0755 "$R/etc/acpi/PWRF/00000080"

    cat >"$R/etc/fstab" <<'EOF'
# <fs>  <mountpoint>  <type>  <options>  <dump>  <pass>
proc    /proc         proc    defaults   0       0
sysfs   /sys          sysfs   defaults   0       0
EOF
    echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
    echo 'root:x:0:' >"$R/etc/group"
    echo 'root:*:19000:0:99999:7:::' >"$R/etc/shadow"
    chmod 0644 "$R/etc/passwd" "$R/etc/group" "$R/etc/fstab" "$R/etc/inittab"
    chmod 0600 "$R/etc/shadow"

    [ ! -e "$R/etc/network" ] || die "rootfs must not contain /etc/network"
    [ -f "$R/bin/busybox" ] && [ ! -L "$R/bin/busybox" ] || die "bin/busybox broken"

    rm -f "$WORK/rootfs.img"
    mkfs.ext4 -q -F -L mln-busybox -E root_owner=0:0 -d "$R" \
        "$WORK/rootfs.img" "$ROOTFS_SIZE" >/dev/null
    if [ "$(id -u)" != 0 ]; then
        # not root: files were copied with our uid; make everything root-owned
        (cd "$R" && find . -mindepth 1 | sed 's|^\.||') | while read -r p; do
            printf 'sif "%s" uid 0\nsif "%s" gid 0\n' "$p" "$p"
        done >"$WORK/chown.cmds"
        debugfs -w -f "$WORK/chown.cmds" "$WORK/rootfs.img" >/dev/null 2>&1
    fi
    mv -f "$WORK/rootfs.img" "$ROOTFS_IMG"
}

# ---------------------------------------------------------------- kernel
resolve_kernel_pkg() {
    local p=
    p=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}') || true
    if [ -z "$p" ]; then
        # offline: fall back to a cached package
        p=$(ls -1 "$DEBS"/linux-image-[0-9]*-amd64_*.deb 2>/dev/null | sort -V \
            | tail -n1 | xargs -r -n1 basename | sed 's/_.*//') || true
    fi
    [ -n "$p" ] || die "cannot resolve the linux-image-*-amd64 package name"
    echo "$p"
}

build_kernel() {
    local pkg deb K kver m f
    pkg=$(resolve_kernel_pkg)
    deb=$(fetch_deb "$pkg") || die "cannot get $pkg"
    log "extracting kernel and modules from $(basename "$deb")"
    K=$WORK/kernel
    mkdir -p "$K"
    local pats=('*/boot/vmlinuz-*' '*/modules.builtin')
    for m in $INITRD_MODULES; do pats+=("*/$m.ko*"); done
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$K" --wildcards "${pats[@]}"
    kver=$(ls -1 "$K/lib/modules" | head -n1)
    [ -n "$kver" ] && [ -f "$K/boot/vmlinuz-$kver" ] || die "no kernel in $deb"

    log "decompressing vmlinuz-$kver -> vmlinux"
    python3 - "$K/boot/vmlinuz-$kver" "$WORK/vmlinux" <<'EOF'
import lzma, sys
data = open(sys.argv[1], "rb").read()
magic = b"\xfd7zXZ\x00"
pos = data.find(magic)
while pos >= 0:
    try:
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        out = d.decompress(data[pos:])
        if out[:4] == b"\x7fELF":
            open(sys.argv[2], "wb").write(out)
            sys.exit(0)
    except lzma.LZMAError:
        pass
    pos = data.find(magic, pos + 1)
sys.exit("no XZ-compressed ELF kernel found in " + sys.argv[1])
EOF

    log "building initrd"
    local I=$WORK/initrd
    get_busybox
    mkdir -p "$I"/{proc,sys,dev,newroot,etc,lib/modules}
    populate_busybox "$I"
    if [ "$(id -u)" = 0 ]; then
        mknod -m 0600 "$I/dev/console" c 5 1
        mknod -m 0666 "$I/dev/null" c 1 3
    fi
    : >"$I/etc/modules"
    for m in $INITRD_MODULES; do
        f=$(find "$K/lib/modules/$kver" -name "$m.ko" -o -name "$m.ko.xz" \
            -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)
        if [ -z "$f" ]; then
            if grep -q "/$m.ko\$" "$K/lib/modules/$kver/modules.builtin" 2>/dev/null; then
                continue        # built into this kernel
            fi
            die "module $m not found in $pkg"
        fi
        case "$f" in
            *.ko.xz)  xz -dc "$f" >"$I/lib/modules/$m.ko" ;;
            *.ko.zst) zstd -qdc "$f" >"$I/lib/modules/$m.ko" ;;
            *.ko.gz)  gzip -dc "$f" >"$I/lib/modules/$m.ko" ;;
            *)        cp "$f" "$I/lib/modules/$m.ko" ;;
        esac
        echo "$m" >>"$I/etc/modules"
    done

    cat >"$I/init" <<'EOF'
#!/bin/sh
# mln test-template initramfs
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

root=/dev/vda
rootfstype=ext4
rootflags=rw
init=/sbin/init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root=${arg#root=} ;;
        rootfstype=*) rootfstype=${arg#rootfstype=} ;;
        init=*) init=${arg#init=} ;;
        ro) rootflags=ro ;;
        rw) rootflags=rw ;;
    esac
done

for m in $(cat /etc/modules); do
    insmod /lib/modules/$m.ko || echo "initrd: insmod $m failed"
done

fail() {
    echo "initrd: $*"
    sync
    poweroff -f
}

n=0
while [ ! -b "$root" ]; do
    n=$((n + 1))
    [ $n -gt 200 ] && fail "root device $root did not appear"
    usleep 50000
done
mount -t "$rootfstype" -o "$rootflags" "$root" /newroot \
    || fail "cannot mount $root on /newroot"
[ -x "/newroot$init" ] || [ -L "/newroot$init" ] || fail "no $init on $root"

mount --move /dev /newroot/dev 2>/dev/null || umount /dev
umount /sys
umount /proc
exec switch_root /newroot "$init"
EOF
    chmod 0755 "$I/init"
    (cd "$I" && find . -mindepth 1 | LC_ALL=C sort \
        | cpio -o -H newc -R 0:0 --quiet) | gzip -9 >"$WORK/initrd.gz"

    mv -f "$WORK/vmlinux" "$KERNEL_IMG"
    mv -f "$WORK/initrd.gz" "$INITRD_IMG"
    chmod 0644 "$KERNEL_IMG" "$INITRD_IMG"
    KERNEL_VERSION=$kver
    KERNEL_PACKAGE=$pkg
    KERNEL_DEB=$(basename "$deb")
}

# ---------------------------------------------------------------- main
if [ "$FORCE" = 1 ] || ! rootfs_current; then
    build_rootfs
fi
chmod 0644 "$ROOTFS_IMG"

KERNEL_VERSION= KERNEL_PACKAGE= KERNEL_DEB=
if [ "$FORCE" = 1 ] || ! initrd_current; then
    build_kernel
else
    # kernel outputs kept: keep their recorded version
    eval "$(grep -E '^KERNEL_(VERSION|PACKAGE|DEB)=' "$MANIFEST")"
fi

{
    echo "# generated by build-test-template.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'KERNEL_VERSION=%q\n' "$KERNEL_VERSION"
    printf 'KERNEL_PACKAGE=%q\n' "$KERNEL_PACKAGE"
    printf 'KERNEL_DEB=%q\n' "$KERNEL_DEB"
    printf 'KERNEL=%q\n' "$KERNEL_IMG"
    printf 'INITRD=%q\n' "$INITRD_IMG"
    printf 'ROOTFS=%q\n' "$ROOTFS_IMG"
    printf 'ROOTFS_REVISION=%q\n' "$ROOTFS_REVISION"
    printf 'INITRD_REVISION=%q\n' "$INITRD_REVISION"
    printf 'KERNEL_APPEND=%q\n' "$KERNEL_APPEND"
    printf 'UML_KERNEL=%q\n' "$UML_KERNEL"
} >"$WORK/manifest"
mv -f "$WORK/manifest" "$MANIFEST"

print_outputs
