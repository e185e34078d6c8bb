#!/usr/bin/env bash
# The quickstart: install mln, build the small busybox test template, build and start the
# two-host quickstart project, show from the guests' consoles that each has its name,
# address and users and reaches the other, then stop it.
#   HYPERVISOR=qemu bash scripts/quickstart.sh   runs the same project on QEMU instead of UML
set -euo pipefail
cd "$(dirname "$0")/.."
HYPERVISOR=${HYPERVISOR:-uml}
TEMPLATE_DIR=${MLN_TEST_TEMPLATE_DIR:-/var/cache/mln/test-template}

echo "== installing mln and what it needs"
bash scripts/install-deps.sh
echo "== building the test template in $TEMPLATE_DIR"
bash contrib/templates/build-test-template.sh "$TEMPLATE_DIR" >/dev/null
mln register_template -t "$TEMPLATE_DIR/busybox.ext4" --kernel "$TEMPLATE_DIR/vmlinux" \
    --initrd "$TEMPLATE_DIR/initrd.gz" -m "busybox test template"

project=$(mktemp -d)/quickstart.mln
sed "s/\$hypervisor = uml/\$hypervisor = $HYPERVISOR/" contrib/quickstart/quickstart.mln > "$project"
echo "== the project ($project)"
mln show -f "$project"
if mln status -p quickstart -u >/dev/null 2>&1; then
  echo "== stopping the quickstart project left running by an earlier run"
  mln stop -p quickstart
fi
echo "== mln build"
mln build -f "$project" -r
trap 'echo "== something failed: stopping the quickstart project"; mln stop -p quickstart -H' ERR
echo "== mln start"
mln start -p quickstart
logs=$(mln list | grep '/quickstart$')/hosts
for host in alpha beta; do
  for _ in $(seq 120); do
    grep -q "MLN-CHECK ping" "$logs/$host/console.log" 2>/dev/null && break
    sleep 0.5
  done
done
echo "== what the guests printed on their consoles"
grep -h "MLN-CHECK" "$logs"/*/console.log
echo "== mln status"
mln status -p quickstart
echo "== typing into alpha's console: printf '\\nhostname; ping -c 1 10.0.0.2\\n' | mln console -p quickstart -h alpha"
printf '\nhostname; ping -c 1 10.0.0.2\n' | mln console -p quickstart -h alpha -w 3 | tr -d '\r' | sed 's/\x1b\[6n//g' | grep -v '^$'
echo "== mln stop"
mln stop -p quickstart
grep -q "MLN-CHECK ping 10.0.0.2 ok" "$logs/alpha/console.log" && grep -q "MLN-CHECK ping 10.0.0.1 ok" "$logs/beta/console.log"
echo "== the two guests reached each other. Start them again with: mln start -p quickstart"
