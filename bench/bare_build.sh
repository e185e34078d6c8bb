#!/bin/bash
# The bare primitives behind `mln build`, for comparison (see bench/engine_bench.py).
#
#   bare_build.sh OUTDIR TEMPLATE SIZE_BYTES JOBS ROOTHASH < HOSTS
#
# HOSTS: one line per host, "KIND NAME ADDRESS", KIND uml or qemu. For every host, JOBS
# at a time (xargs -P), it makes the disk and writes the files mln's guestconfig writes
# into a busybox guest (hostname, rcS with the network and startup sections, shadow with
# the root hash, hosts with every address, fstab):
#
#   uml:  cp --sparse=always T img; truncate -s SIZE img; e2fsck -fy img; resize2fs img;
#         debugfs -w -f CMDS img
#   qemu: qemu-img create -f qcow2 -b T -F raw ov SIZE; qemu-storage-daemon FUSE export;
#         e2fsck -fy; resize2fs; debugfs -w -f CMDS; kill the daemon (wait for the unmount)
#
# The contents shared by all hosts (rcS and shadow of the template, /etc/hosts) are made
# once, at the start. Everything goes below OUTDIR.
set -euo pipefail

one() {
    local out=$1 t=$2 size=$3 kind=$4 name=$5 addr=$6
    local d=$out/$name
    mkdir -p "$d"
    printf '%s\n' "$name" > "$d/hostname"
    {
        cat "$out/common/rcS"
        printf '# >>> mln network >>>\nifconfig eth0 %s netmask 255.255.0.0 up\n# <<< mln network <<<\n' "$addr"
        printf '# >>> mln startup >>>\necho "MLN-BENCH-UP $(hostname)"\n# <<< mln startup <<<\n'
    } > "$d/rcS"
    local root=/dev/ubda
    [ "$kind" = qemu ] && root=/dev/vda
    printf '%s\t/\text4\tdefaults\t0\t1\nproc\t/proc\tproc\tdefaults\t0\t0\n' "$root" > "$d/fstab"
    cat > "$d/cmds" <<EOF
rm /etc/hostname
write $d/hostname /etc/hostname
rm /etc/init.d/rcS
write $d/rcS /etc/init.d/rcS
sif /etc/init.d/rcS mode 0100755
rm /etc/shadow
write $out/common/shadow /etc/shadow
sif /etc/shadow mode 0100600
rm /etc/hosts
write $out/common/hosts /etc/hosts
rm /etc/fstab
write $d/fstab /etc/fstab
EOF
    if [ "$kind" = uml ]; then
        local img=$d/disk.img
        cp --sparse=always --reflink=auto "$t" "$img"
        truncate -s "$size" "$img"
        e2fsck -fy "$img" >/dev/null 2>&1 || [ $? -le 1 ]
        resize2fs "$img" >/dev/null 2>&1
        debugfs -w -f "$d/cmds" "$img" >/dev/null 2>&1
    else
        local ov=$d/disk.qcow2 raw=$d/raw
        qemu-img create -q -f qcow2 -b "$t" -F raw "$ov" "$size"
        : > "$raw"
        qemu-storage-daemon \
            --blockdev "driver=file,node-name=f0,filename=$ov" \
            --blockdev "driver=qcow2,node-name=q0,file=f0" \
            --export "type=fuse,id=e0,node-name=q0,mountpoint=$raw,writable=on" \
            --pidfile "$d/qsd.pid" --daemonize
        local rc=0
        { e2fsck -fy "$raw" >/dev/null 2>&1 || [ $? -le 1 ]; } &&
            resize2fs "$raw" >/dev/null 2>&1 &&
            debugfs -w -f "$d/cmds" "$raw" >/dev/null 2>&1 || rc=$?
        local pid
        pid=$(cat "$d/qsd.pid")
        kill "$pid"
        # gone, or a zombie waiting for init to reap it (as mln's imagefs checks)
        while [ -e "/proc/$pid" ] && ! grep -q '^[0-9]* ([^)]*) [ZX]' "/proc/$pid/stat" 2>/dev/null; do
            sleep 0.01
        done
        while grep -qF " $raw " /proc/mounts; do sleep 0.01; done
        return $rc
    fi
}

if [ "${1:-}" = --one ]; then
    shift
    one "$@"
    exit
fi

[ $# -eq 5 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
OUT=$1 T=$2 SIZE=$3 JOBS=$4 ROOTHASH=$5
mkdir -p "$OUT/common"
HOSTS=$(cat)
debugfs -R "cat /etc/init.d/rcS" "$T" 2>/dev/null > "$OUT/common/rcS"
debugfs -R "cat /etc/shadow" "$T" 2>/dev/null |
    awk -F: -v OFS=: -v h="$ROOTHASH" '$1 == "root" { $2 = h } { print }' > "$OUT/common/shadow"
{
    printf '127.0.0.1\tlocalhost\n'
    printf '%s\n' "$HOSTS" | awk '{ printf "%s\t%s\n", $3, $2 }'
    printf '\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n'
} > "$OUT/common/hosts"
printf '%s\n' "$HOSTS" | xargs -P "$JOBS" -L 1 "$0" --one "$OUT" "$T" "$SIZE"
