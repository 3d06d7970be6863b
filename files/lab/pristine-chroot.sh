#!/usr/bin/env bash
# Run the README's set-up as a new user would, on a pristine Debian machine: a fresh
# debootstrap tree of RELEASE (minbase with ca-certificates, as any installed Debian has it,
# plus the network's CA certificates, as a machine behind a TLS-inspecting proxy has), made the
# root of a mount namespace of its own (pivot_root) and entered as root with an empty
# environment, cloning this repository's committed HEAD. Not a plain chroot: the kernel refuses
# user namespaces to chrooted processes (PrivateUsers= units fail with 217/USER), and nsenter
# into a host's mount namespace would land on this machine's root instead of the host's.
# Unlike the `pristine` molecule scenario (toolchain and lint inside lab hosts), it can run
# `make lab` and `make test` themselves, since nspawn works from a chroot.
#
#   files/lab/pristine-chroot.sh RELEASE 'make lab && make lab-down'
#
# The tree lives in /var/tmp/pristine-RELEASE and is removed at the end; the clone's
# artifacts/ (test results, measurements) are kept in artifacts/pristine-RELEASE/ here.
set -euo pipefail
release=${1:?release: bookworm or trixie}
commands=${2:?commands to run in the clone}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
root=/var/tmp/pristine-$release
mirror=$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import lab; print(lab.apt_mirror())' "$repo/files/lab")

cleanup() {
  # The lab's hosts, bridge and nft table, should the commands have stopped half-way.
  if [ -x "$root/usr/bin/python3" ] && [ -f "$root/root/dagster-ansible/files/lab/lab.py" ]; then
    chroot "$root" python3 /root/dagster-ansible/files/lab/lab.py down >/dev/null 2>&1 || true
  fi
  if [ -d "$root/root/dagster-ansible/artifacts" ]; then
    rm -rf "$repo/artifacts/pristine-$release"
    mkdir -p "$repo/artifacts"
    cp -r "$root/root/dagster-ansible/artifacts" "$repo/artifacts/pristine-$release"
  fi
  { findmnt -rno TARGET | grep -x "$root\(/.*\)\?" || true; } | sort -r | xargs -r -n1 umount --lazy
  rm -rf "$root"
}
# The chroot shares this machine's network: its lab would take the same bridge.
if ip link show "${DAGSTER_LAB_BRIDGE:-dglab0}" >/dev/null 2>&1; then
  echo "pristine-chroot: a lab is up on this machine (bridge ${DAGSTER_LAB_BRIDGE:-dglab0}): make lab-down first" >&2
  exit 1
fi
trap cleanup EXIT
cleanup

mkdir -p "$root"
# The tree must be a mount point of its own: nspawn inside it remounts / as a slave.
mount --bind "$root" "$root"
mount --make-private "$root"
debootstrap --variant=minbase --include=ca-certificates "$release" "$root" "$mirror" >/dev/null
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$root" update-ca-certificates >/dev/null
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
# Slaves: what happens under them (nspawn's mounts, the final unmount) stays there.
mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys"
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mkdir -p "$root/srv/origin"
mount --bind -o ro "$repo" "$root/srv/origin"

env -i HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  unshare --mount --propagation private -- /bin/sh -c '
    cd "$1" && mkdir -p .old-root && pivot_root . .old-root && cd / && umount --lazy /.old-root \
      && rmdir /.old-root && exec /bin/bash -euo pipefail -c "$2"' pivot "$root" "
    cd /root
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git make >/dev/null
    git config --global --add safe.directory /srv/origin
    git clone -q /srv/origin dagster-ansible && cd dagster-ansible
    $commands"
