#!/bin/bash
# Smoke test for the busybox test template (build-test-template.sh) with real
# UML and QEMU (TCG) guests.
#
# Usage: contrib/templates/smoke-test.sh [TEMPLATE_DIR]
#        (default TEMPLATE_DIR=/var/cache/mln/test-template; built if missing)
# Env:   SMOKE_TAP=0   skip step e (tap + bridge inside a private netns; root only)
#        SMOKE_KEEP=1  keep the temporary directory (logs) after the run
#
# Steps (each with a timeout; everything started here is stopped in a trap):
#  a. two UML guests on one vde_switch ping each other and power off by themselves
#  b. one QEMU guest (qcow2 overlay, virtio, -daemonize, QMP) + one UML guest on
#     the same vde_switch ping each other and power off by themselves
#  c. QEMU guest on a qcow2 overlay of the template itself, individualized
#     through a qemu-storage-daemon FUSE export: QMP query-status answers;
#     QMP system_powerdown -> guest acpid -> poweroff -> QEMU exits (else QMP
#     quit, and the step fails)
#  d. detached UML guest (umid/uml_dir): uml_mconsole version answers, cad stops it
#  e. QEMU guest and UML guest on taps in a bridge inside a private netns
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TPL=${1:-/var/cache/mln/test-template}
SMOKE_TAP=${SMOKE_TAP:-1}

if [ ! -s "$TPL/manifest" ]; then
    "$HERE/build-test-template.sh" "$TPL"
fi
# shellcheck disable=SC1091
. "$TPL/manifest"
for f in "$KERNEL" "$INITRD" "$ROOTFS" "$UML_KERNEL"; do
    [ -e "$f" ] || { echo "missing $f" >&2; exit 1; }
done
for tool in qemu-system-x86_64 qemu-img vde_switch uml_mconsole debugfs python3; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

T=$(mktemp -d /tmp/mln-smoke.XXXXXX)
NETNS=mln-smoke-$$
QEMU_WRAP=()        # e.g. (ip netns exec NS)
UML_PIDS=()         # linux.uml main pids (each a process-group leader, via setsid)
QEMU_PIDFILES=()
QSD_PIDFILES=()     # qemu-storage-daemon (FUSE exports)
VDE_PIDFILE=$T/sw.pid
FAILED=0
NETNS_CREATED=0

# alive PID COMM: PID exists, is not a zombie, and its comm starts with COMM
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    grep -q "^$1 ($2[^)]*) [^Z]" "/proc/$1/stat" 2>/dev/null
}

cleanup() {
    local p f stop=()
    set +e
    for p in "${UML_PIDS[@]}"; do
        alive "$p" linux && kill -TERM "$p" && stop+=("$p")
    done
    for f in "${QEMU_PIDFILES[@]}" "${QSD_PIDFILES[@]}"; do
        [ -s "$f" ] && p=$(cat "$f") && alive "$p" qemu && kill -TERM "$p"
    done
    [ ${#stop[@]} -gt 0 ] && sleep 0.5
    for p in "${stop[@]}"; do
        kill -KILL -- "-$p" 2>/dev/null     # UML and its helper processes
    done
    for f in "${QEMU_PIDFILES[@]}" "${QSD_PIDFILES[@]}"; do
        [ -s "$f" ] && p=$(cat "$f") && alive "$p" qemu && kill -KILL "$p"
    done
    if [ -s "$VDE_PIDFILE" ]; then
        p=$(cat "$VDE_PIDFILE")
        alive "$p" vde_switch && kill -TERM "$p" && wait_gone "$p" 5
    fi
    grep -o " $T/[^ ]* fuse" /proc/mounts | awk '{print $1}' | xargs -r -n1 umount
    [ "$NETNS_CREATED" = 1 ] && ip netns del "$NETNS"
    if [ "${SMOKE_KEEP:-0}" = 1 ] || [ "$FAILED" != 0 ]; then
        echo "logs kept in $T"
    else
        rm -rf "$T"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

START=$(date +%s.%N)
TPL_SUM=$(sha256sum <"$ROOTFS")
now() { python3 -c "import time,sys; print('%.1f' % (time.time()-float(sys.argv[1])))" "$1"; }
stamp() { date +%s.%N; }
say() { echo "[$(now "$START")s] $*"; }
fail() { say "FAIL: $*"; FAILED=1; exit 1; }

# ------------------------------------------------------------------ helpers
# individualize IMG HOSTNAME IP PEER_IP MODE
#   edit an ext4 image (raw file or FUSE view of a qcow2) with debugfs the
#   way mln does: write /etc/hostname, append marked sections to rcS.
#   MODE=ping: ping PEER, print PING_OK, power off.  MODE=wait: print READY
#   and stay up (to be stopped from outside).
individualize() {
    local img=$1 name=$2 ip=$3 peer=$4 mode=$5 d
    d=$T/cfg-$name
    mkdir -p "$d"
    echo "$name" >"$d/hostname"
    debugfs -R 'cat /etc/init.d/rcS' "$img" 2>/dev/null >"$d/rcS"
    grep -q '^#!/bin/sh' "$d/rcS" || fail "cannot read rcS from $img"
    {
        echo "# --- mln: network (begin) ---"
        echo "ifconfig eth0 $ip netmask 255.255.255.0 up"
        echo "# --- mln: network (end) ---"
        echo "# --- mln: startup (begin) ---"
        echo "echo HOSTNAME_IS \$(hostname)"
        if [ "$mode" = ping ]; then
            # wait until the peer is up, then the real test
            echo "n=0; until ping -c 1 -W 1 $peer >/dev/null 2>&1; do n=\$((n+1)); [ \$n -ge 60 ] && break; done"
            echo "ping -c 3 $peer && echo PING_OK"
            echo "sleep 3"      # let the peer finish its own pings
            echo "poweroff"
        else
            echo "echo READY"
        fi
        echo "# --- mln: startup (end) ---"
    } >>"$d/rcS"
    cat >"$d/cmds" <<EOF
rm /etc/hostname
write $d/hostname /etc/hostname
sif /etc/hostname mode 0100644
rm /etc/init.d/rcS
write $d/rcS /etc/init.d/rcS
sif /etc/init.d/rcS mode 0100755
EOF
    debugfs -w -f "$d/cmds" "$img" >/dev/null 2>&1
    debugfs -R 'cat /etc/hostname' "$img" 2>/dev/null | grep -qx "$name" \
        || fail "individualizing $img"
}

# mkguest IMG ARGS...: sparse copy of the template, then individualize it
mkguest() {
    cp --sparse=always "$ROOTFS" "$1"
    individualize "$@"
}

# mkoverlay OVERLAY ARGS...: qcow2 overlay directly on the template, edited
# through a qemu-storage-daemon FUSE export of its raw view (no mount, no nbd)
mkoverlay() {
    local ov=$1 view=$1.fuse pidf=$1.qsd.pid p; shift
    qemu-img create -q -f qcow2 -b "$ROOTFS" -F raw "$ov"
    : >"$view"
    QSD_PIDFILES+=("$pidf")
    timeout 10 qemu-storage-daemon \
        --blockdev driver=file,node-name=f0,filename="$ov" \
        --blockdev driver=qcow2,node-name=q0,file=f0 \
        --export type=fuse,id=e0,node-name=q0,mountpoint="$view",writable=on \
        --pidfile "$pidf" --daemonize || fail "qemu-storage-daemon"
    individualize "$view" "$@"
    p=$(cat "$pidf")
    kill -TERM "$p"
    wait_gone "$p" 10 || fail "qemu-storage-daemon did not stop"
    grep -q " $view fuse" /proc/mounts && fail "FUSE export still mounted"
    rm -f "$view"
}

# start_uml NAME IMG NETARG  -> runs detached, console to $T/NAME.log
start_uml() {
    local name=$1 img=$2 net=$3
    mkdir -p "$T/uml"
    setsid "$UML_KERNEL" ubd0="$img" root=/dev/ubda rw mem=64M $net \
        con=null con0=null,fd:1 quiet umid="$name" uml_dir="$T/uml" \
        </dev/null >"$T/$name.log" 2>&1 &
    UML_PIDS+=($!)
    eval "PID_$name=$!"
}

# start_qemu NAME OVERLAY NETARGS...  -> daemonized, serial to $T/NAME.log
start_qemu() {
    local name=$1 disk=$2; shift 2
    QEMU_PIDFILES+=("$T/$name.pid")
    "${QEMU_WRAP[@]}" qemu-system-x86_64 -accel tcg -m 256 -nodefaults -no-user-config \
        -display none -monitor none \
        -kernel "$KERNEL" -initrd "$INITRD" -append "$KERNEL_APPEND" \
        -drive file="$disk",format=qcow2,if=virtio,cache=writeback \
        "$@" \
        -serial file:"$T/$name.log" \
        -qmp unix:"$T/$name.qmp",server=on,wait=off \
        -pidfile "$T/$name.pid" -daemonize \
        || fail "qemu $name did not start"
}

qemu_pid() { cat "$T/$1.pid"; }

# qmp SOCKET COMMAND -> prints the JSON return value
qmp() {
    timeout 10 python3 - "$1" "$2" <<'EOF'
import asyncio, json, sys
from qemu.qmp import QMPClient
async def main(sock, cmd):
    c = QMPClient("mln-smoke")
    await c.connect(sock)
    try:
        print(json.dumps(await c.execute(cmd)))
    finally:
        await c.disconnect()
asyncio.run(main(sys.argv[1], sys.argv[2]))
EOF
}

# wait_exit PID TIMEOUT -> 0 if PID is gone within TIMEOUT seconds
wait_exit() {
    wait_gone "$1" "$2" || return 1
    wait "$1" 2>/dev/null || true       # reap it if it is our child
    return 0
}

# wait_gone PID TIMEOUT: like wait_exit for processes that are not our
# children (daemonized): a zombie counts as gone
wait_gone() {
    local end
    end=$(( $(date +%s) + $2 ))
    while [ -e "/proc/$1" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.05
    done
}

# wait_log FILE PATTERN TIMEOUT
wait_log() {
    local end
    end=$(( $(date +%s) + $3 ))
    until grep -q "$2" "$1" 2>/dev/null; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.1
    done
}

check_log() {   # NAME WORD...
    local name=$1 w; shift
    for w in "$@"; do
        grep -q "$w" "$T/$name.log" || { sed 's/^/    | /' "$T/$name.log"; fail "$name: no $w in log"; }
    done
    say "  $name: $(grep -o 'HOSTNAME_IS.*' "$T/$name.log" | head -1), $(grep -c 'bytes from' "$T/$name.log" || true) ping replies, $*"
}

# ------------------------------------------------------------------ a
say "a. two UML guests on a vde_switch"
VDE=$T/sw.ctl
vde_switch -s "$VDE" -d -p "$VDE_PIDFILE" || fail "vde_switch"
mkguest "$T/ua1.ext4" ua1 10.0.0.1 10.0.0.2 ping
mkguest "$T/ua2.ext4" ua2 10.0.0.2 10.0.0.1 ping
t=$(stamp)
start_uml ua1 "$T/ua1.ext4" "eth0=vde,$VDE,fe:fd:0a:00:00:01"
start_uml ua2 "$T/ua2.ext4" "eth0=vde,$VDE,fe:fd:0a:00:00:02"
wait_log "$T/ua1.log" HOSTNAME_IS 60 || fail "ua1 did not boot"
say "  ua1 booted (HOSTNAME_IS) after $(now "$t")s"
wait_exit "$PID_ua1" 90 || fail "ua1 did not exit"
wait_exit "$PID_ua2" 90 || fail "ua2 did not exit"
say "  both UML guests exited by themselves after $(now "$t")s"
check_log ua1 "HOSTNAME_IS ua1" PING_OK "reboot: System halted"
check_log ua2 "HOSTNAME_IS ua2" PING_OK "reboot: System halted"

# ------------------------------------------------------------------ b
say "b. QEMU guest (qcow2 overlay) + UML guest on the same vde_switch"
mkguest "$T/qb1.raw" qb1 10.0.0.11 10.0.0.12 ping
qemu-img create -q -f qcow2 -b "$T/qb1.raw" -F raw "$T/qb1.qcow2"
mkguest "$T/ub2.ext4" ub2 10.0.0.12 10.0.0.11 ping
t=$(stamp)
start_qemu qb1 "$T/qb1.qcow2" \
    -netdev vde,id=n0,sock="$VDE" -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:0b
start_uml ub2 "$T/ub2.ext4" "eth0=vde,$VDE,fe:fd:0a:00:00:0c"
wait_log "$T/qb1.log" HOSTNAME_IS 90 || fail "qb1 did not boot"
say "  qb1 booted (HOSTNAME_IS) after $(now "$t")s"
QB1=$(qemu_pid qb1)
wait_exit "$QB1" 120 || fail "qb1 did not exit"
wait_exit "$PID_ub2" 120 || fail "ub2 did not exit"
say "  QEMU and UML guests exited by themselves after $(now "$t")s"
check_log qb1 "HOSTNAME_IS qb1" PING_OK "reboot: Power down"
check_log ub2 "HOSTNAME_IS ub2" PING_OK "reboot: System halted"
qemu-img check -q "$T/qb1.qcow2" || fail "qb1.qcow2 not clean"

# ------------------------------------------------------------------ c
say "c. QEMU: QMP query-status and system_powerdown"
mkoverlay "$T/qc1.qcow2" qc1 10.0.0.21 - wait     # overlay on the template itself
t=$(stamp)
start_qemu qc1 "$T/qc1.qcow2" -nic none
QC1=$(qemu_pid qc1)
st=$(qmp "$T/qc1.qmp" query-status) || fail "QMP query-status"
say "  query-status: $st"
echo "$st" | grep -q '"running"' || fail "qc1 not running"
wait_log "$T/qc1.log" READY 90 || fail "qc1 did not reach READY"
say "  qc1 READY after $(now "$t")s"
sleep 0.5      # let acpid settle
t=$(stamp)
qmp "$T/qc1.qmp" system_powerdown >/dev/null || fail "QMP system_powerdown"
if wait_exit "$QC1" 15; then
    say "  system_powerdown: QEMU exited after $(now "$t")s"
    check_log qc1 "HOSTNAME_IS qc1" READY "reboot: Power down"
    qemu-img check -q "$T/qc1.qcow2" || fail "qc1.qcow2 not clean"
else
    say "  system_powerdown ignored; sending QMP quit"
    qmp "$T/qc1.qmp" quit >/dev/null || true
    wait_exit "$QC1" 10 || fail "qc1 did not quit"
    fail "system_powerdown did not stop the guest"
fi

# ------------------------------------------------------------------ d
say "d. detached UML guest: uml_mconsole version / cad"
mkguest "$T/ud1.ext4" ud1 10.0.0.31 - wait
t=$(stamp)
start_uml ud1 "$T/ud1.ext4" "eth0=vde,$VDE"
MC=$T/uml/ud1/mconsole
wait_log "$T/ud1.log" READY 60 || fail "ud1 did not reach READY"
say "  ud1 READY after $(now "$t")s"
[ "$(cat "$T/uml/ud1/pid")" = "$PID_ud1" ] || fail "uml pid file mismatch"
v=$(timeout 10 uml_mconsole "$MC" version 2>/dev/null) || fail "mconsole version"
say "  mconsole version: $v"
echo "$v" | grep -q '^OK Linux ud1 ' || fail "unexpected mconsole answer"
t=$(stamp)
timeout 10 uml_mconsole "$MC" cad >/dev/null 2>&1 || fail "mconsole cad"
wait_exit "$PID_ud1" 30 || fail "ud1 did not stop after cad"
say "  cad: UML exited after $(now "$t")s"
check_log ud1 "HOSTNAME_IS ud1" READY "reboot: System halted"
[ ! -e "$T/uml/ud1" ] || fail "UML left $T/uml/ud1 behind"

# ------------------------------------------------------------------ e
if [ "$SMOKE_TAP" = 1 ] && [ "$(id -u)" = 0 ] && ip netns add "$NETNS" 2>/dev/null; then
    NETNS_CREATED=1
    say "e. QEMU + UML on taps in a bridge inside netns $NETNS"
    NS=(ip netns exec "$NETNS")
    "${NS[@]}" ip link add br0 type bridge
    "${NS[@]}" ip link set br0 up
    for tap in tq0 tu0; do
        "${NS[@]}" ip tuntap add "$tap" mode tap
        "${NS[@]}" ip link set "$tap" master br0
        "${NS[@]}" ip link set "$tap" up
    done
    mkguest "$T/qe1.raw" qe1 10.0.0.41 10.0.0.42 ping
    qemu-img create -q -f qcow2 -b "$T/qe1.raw" -F raw "$T/qe1.qcow2"
    mkguest "$T/ue2.ext4" ue2 10.0.0.42 10.0.0.41 ping
    t=$(stamp)
    QEMU_WRAP=("${NS[@]}")
    start_qemu qe1 "$T/qe1.qcow2" \
        -netdev tap,id=n0,ifname=tq0,script=no,downscript=no \
        -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:29
    QEMU_WRAP=()
    mkdir -p "$T/uml"
    setsid ip netns exec "$NETNS" "$UML_KERNEL" ubd0="$T/ue2.ext4" root=/dev/ubda rw \
        mem=64M eth0=tuntap,tu0,fe:fd:0a:00:00:2a con=null con0=null,fd:1 quiet \
        umid=ue2 uml_dir="$T/uml" </dev/null >"$T/ue2.log" 2>&1 &
    PID_ue2=$!; UML_PIDS+=("$PID_ue2")
    QE1=$(qemu_pid qe1)
    wait_exit "$QE1" 120 || fail "qe1 did not exit"
    wait_exit "$PID_ue2" 120 || fail "ue2 did not exit"
    say "  QEMU and UML guests exited by themselves after $(now "$t")s"
    check_log qe1 "HOSTNAME_IS qe1" PING_OK "reboot: Power down"
    check_log ue2 "HOSTNAME_IS ue2" PING_OK "reboot: System halted"
    ip netns del "$NETNS" && NETNS_CREATED=0
else
    say "e. skipped (needs root and SMOKE_TAP=1)"
fi

[ "$(sha256sum <"$ROOTFS")" = "$TPL_SUM" ] || fail "template $ROOTFS was modified"
say "template unchanged"
say "ALL OK"
