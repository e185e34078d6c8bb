#!/bin/sh
# A named fake: what Debian 12's User-Mode Linux 6.1 does on an Intel CPU with AMX, on any
# machine. It answers --version and --help like that UML and, booted, prints the crash it
# dies of there and exits.
case "$1" in
  --version) echo "6.1.176"; exit 0 ;;
  --help)
    printf 'mem=<Amount of desired ram>\nvec[0-9]+:<option>=<value>,<option>=<value>\n'
    printf '    Configure a vector io network device.\neth[0-9]+=<transport>,<options>\n'
    printf '    Configure a network device.\n'
    exit 0 ;;
esac
cat <<'CRASH'
Linux version 6.1.176 (debian-kernel@lists.debian.org) (fake_uml_amx_crash)
Run /sbin/init as init process
userspace - ptrace set fp regs failed, errno = 14
Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b
CRASH
exit 1
