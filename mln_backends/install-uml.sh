#!/usr/bin/env bash
# Put a User-Mode Linux that boots on this machine under /opt/mln/uml, from Debian's archive.
#
# Usage: install-uml.sh [--always] [--force] [PREFIX]       (as root; PREFIX default /opt/mln/uml)
#
# The distribution's UML (Debian 12's 6.1, Debian 13's 6.12) dies at boot on Intel CPUs with
# AMX. This script probes it (a real boot of a tiny image, python3 -m mln_backends.umlprobe);
# when it cannot run here (or with --always, to have both), it takes the newest
# user-mode-linux of the first suite among testing and unstable whose UML boots here:
#   - a private apt configuration for that suite (same archive as the system's sources, the
#     system's keyring), apt-get download of user-mode-linux and that suite's libc6 (the new
#     UML needs glibc >= 2.38), kept with their checksums in PREFIX/<version>/debs/SHA256SUMS;
#   - both unpacked under PREFIX/<version>/root, a copy of linux.uml pointed at that libc with
#     patchelf (running it through ld.so --library-path fails UML's own memory check);
#   - the probe boot; PREFIX/current then points at it, PREFIX/<version>/modules at its modules.
# Nothing is installed into the system's package database. When the system's UML cannot run,
# /etc/mln/mln.conf gets 'default_kernel PREFIX/current/linux.uml' (unless it names a
# default_kernel already). --force downloads again even if a working one is in place.
set -euo pipefail
ALWAYS=0 FORCE=0 PREFIX=/opt/mln/uml
for a in "$@"; do
  case "$a" in
    --always) ALWAYS=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "install-uml: unknown option $a" >&2; exit 2 ;;
    *) PREFIX=$a ;;
  esac
done
PYTHON=${PYTHON:-python3}
SYSTEM_UML=/usr/bin/linux.uml
CONF=/etc/mln/mln.conf
log() { echo "install-uml: $*" >&2; }
probe() { "$PYTHON" -m mln_backends.umlprobe "$1"; }

system_ok=0
if [ -x "$SYSTEM_UML" ] && probe "$SYSTEM_UML" >&2; then system_ok=1; fi

configure() {
  [ "$system_ok" = 1 ] && return 0
  if [ -f "$CONF" ] && grep -Eq '^[[:space:]]*default_kernel[[:space:]]' "$CONF"; then
    log "$CONF names a default_kernel already; left as it is (use $PREFIX/current/linux.uml)"
    return 0
  fi
  mkdir -p "$(dirname "$CONF")"
  printf '# the UML that boots on this machine (%s)\ndefault_kernel %s\n' "$(basename "$0")" \
    "$PREFIX/current/linux.uml" >> "$CONF"
  log "default_kernel $PREFIX/current/linux.uml written to $CONF"
}

if [ "$system_ok" = 1 ] && [ "$ALWAYS" = 0 ]; then
  log "the system's UML boots here; nothing to install"
  exit 0
fi
if [ "$FORCE" = 0 ] && [ -x "$PREFIX/current/linux.uml" ] && probe "$PREFIX/current/linux.uml" >&2; then
  log "a working UML is in place: $(readlink -f "$PREFIX/current")"
  configure
  exit 0
fi

command -v patchelf >/dev/null || { log "patchelf is needed (apt-get install patchelf)"; exit 1; }
. /etc/os-release
# The archive the system's own suite comes from (no host name is written here).
site_of_system() {
  apt-get indextargets --format '$(SITE) $(RELEASE)' 2>/dev/null \
    | awk -v rel="${VERSION_CODENAME:-bookworm}" '$2 == rel { print $1; exit }'
}
site=$(site_of_system)
[ -n "$site" ] || { apt-get update -qq >&2 || true; site=$(site_of_system); }
[ -n "$site" ] || { log "cannot tell which Debian archive this system uses (apt-get indextargets)"; exit 1; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$PREFIX"
work=$(mktemp -d "$PREFIX/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

for suite in testing unstable; do
  apt_dir=$work/apt-$suite
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
    "$site" "$suite" "$keyring" > "$apt_dir/suite.sources"
  apt_opts=(-o Dir::Etc::SourceList="$apt_dir/suite.sources" -o Dir::Etc::SourceParts=/dev/null
            -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache"
            -o Dir::State::status=/dev/null -o APT::Sandbox::User=root -qq)
  if ! apt-get "${apt_opts[@]}" update >&2; then log "$suite: apt-get update failed"; continue; fi
  version=$(apt-cache "${apt_opts[@]}" policy user-mode-linux | awk '/Candidate:/ { print $2 }')
  if [ -z "$version" ] || [ "$version" = "(none)" ]; then log "$suite has no user-mode-linux"; continue; fi
  dest=$PREFIX/$version
  if [ "$FORCE" = 0 ] && [ -x "$dest/linux.uml" ] && probe "$dest/linux.uml" >&2; then
    log "$suite: user-mode-linux $version is in place already"
  else
    log "$suite: user-mode-linux $version"
    new=$work/$version
    mkdir -p "$new/debs" "$new/root"
    # apt-get download checks each file against the suite's signed index
    (cd "$new/debs" && apt-get "${apt_opts[@]}" download user-mode-linux libc6 >&2) \
      || { log "$suite: download failed"; continue; }
    (cd "$new/debs" && sha256sum ./*.deb > SHA256SUMS)
    for deb in "$new"/debs/*.deb; do dpkg-deb -x "$deb" "$new/root"; done
    cp "$new/root/usr/bin/linux.uml" "$new/linux.uml"
    patchelf --set-interpreter "$dest/root/usr/lib64/ld-linux-x86-64.so.2" \
             --set-rpath "$dest/root/usr/lib/x86_64-linux-gnu" "$new/linux.uml"
    ln -sfn root/usr/lib/uml/modules "$new/modules"
    rm -rf "$dest.old"
    [ -e "$dest" ] && mv "$dest" "$dest.old"
    mv "$new" "$dest"
    rm -rf "$dest.old"
    if ! probe "$dest/linux.uml" >&2; then
      log "$suite: user-mode-linux $version does not boot here either"
      continue
    fi
  fi
  ln -sfn "$version" "$PREFIX/.current.new" && mv -T "$PREFIX/.current.new" "$PREFIX/current"
  log "installed: $PREFIX/current/linux.uml ($version, from $suite)"
  configure
  exit 0
done
log "no suite of the archive has a user-mode-linux that boots on this machine"
exit 1
