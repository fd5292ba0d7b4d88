#!/usr/bin/env bash
# Builds the tiny real guest the integration tests boot under QEMU (TCG):
# a Debian kernel and a busybox initramfs, from Debian packages only.
#
#   tools/build-test-guest.sh [--force]
#
# Output, in ${NOVA_LIFECYCLE_GUEST_DIR:-/var/cache/nova-lifecycle/guest}:
#   vmlinuz, initrd.img   the guest (their paths are printed on stdout, one
#                         per line; progress goes to stderr)
#   build-hash            sha256 of this script when the guest was built:
#                         the guest is built once per machine and rebuilt
#                         only when this script changes (or with --force);
#                         the tests compare it with the script too
#   kernel-release        e.g. 6.1.0-56-amd64
#   debs/                 the downloaded .deb files, kept for rebuilds
#
# Pieces (run as root, or with the host packages below already installed):
#   - the kernel: the package linux-image-amd64 currently depends on
#     (`apt-cache depends linux-image-amd64`), fetched with apt-get
#     download; boot/vmlinuz-* and these modules of the same package:
#     evdev.ko and button.ko (the ACPI power button reaches busybox acpid
#     through /dev/input/event*), pvpanic.ko and pvpanic-mmio.ko (the ISA
#     pvpanic device, <panic model='isa'/>, through which QEMU, then
#     libvirt, learn of a guest kernel panic);
#   - busybox-static: /bin/busybox;
#   - host packages: cpio (builds the gzip'ed newc archive; installed when
#     missing), gzip, dpkg, apt, util-linux (flock).
#
# The guest's /init (busybox sh) mounts proc, sys and devtmpfs, loads the
# modules, prints "nova-lifecycle-guest: ready" on the serial console and
# then follows words of the kernel command line (/proc/cmdline):
#   lc.acpi=honour        (default) power off (poweroff -f) on the ACPI
#                         power button, i.e. on virDomainShutdown
#   lc.acpi=ignore        ignore the power button (presses are logged)
#   lc.acpi_ignore=N      ignore the first N presses, then honour
#   lc.poweroff_after=N   power off by itself N seconds after ready
#   lc.reboot_after=N     reboot by itself N seconds after ready (on every
#                         boot: the command line stays the same)
#   lc.panic_after=N      kernel panic (sysrq 'c') N seconds after ready
# Every press and action is logged on the console as
# "nova-lifecycle-guest: <what>", so a test can wait for it in the serial
# log.
set -euo pipefail

SCRIPT=$(readlink -f "$0")
GUEST_DIR=${NOVA_LIFECYCLE_GUEST_DIR:-/var/cache/nova-lifecycle/guest}
FORCE=0
case "${1:-}" in
    "") ;;
    --force) FORCE=1 ;;
    -h|--help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) echo "build-test-guest: FAILED: unknown argument '$1'" >&2; exit 2 ;;
esac

TOOL=build-test-guest
SAY_FD=2
# shellcheck source=tools/common.sh
. "$(dirname "$0")/common.sh"

print_paths() {
    echo "$GUEST_DIR/vmlinuz"
    echo "$GUEST_DIR/initrd.img"
}

HASH=$(sha256sum "$SCRIPT" | cut -d' ' -f1)

is_current() {
    [ -s "$GUEST_DIR/vmlinuz" ] && [ -s "$GUEST_DIR/initrd.img" ] \
        && [ "$(cat "$GUEST_DIR/build-hash" 2>/dev/null)" = "$HASH" ]
}

if [ "$FORCE" -eq 0 ] && is_current; then
    say "up to date in $GUEST_DIR"
    print_paths
    exit 0
fi

mkdir -p "$GUEST_DIR/debs" || fail "cannot create $GUEST_DIR"
# One build at a time per cache directory.
exec 9>"$GUEST_DIR/.lock"
flock -w 600 9 || fail "another build holds $GUEST_DIR/.lock"
if [ "$FORCE" -eq 0 ] && is_current; then
    say "built meanwhile by another run"
    print_paths
    exit 0
fi

START=$SECONDS

# Host tools.
need=()
command -v cpio >/dev/null || need+=(cpio)
command -v gzip >/dev/null || need+=(gzip)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        fail "missing host packages: ${need[*]} (run as root to install them)"
    fi
    say "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${need[@]}" \
            >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${need[@]}" \
            >/dev/null 2>&1 || fail "apt-get install ${need[*]} failed"
    fi
fi

kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

KPKG=$(kernel_package)
if [ -z "$KPKG" ]; then
    say "apt-get update (linux-image-amd64 unknown to apt-cache)"
    apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed"
    KPKG=$(kernel_package)
fi
[ -n "$KPKG" ] || fail "apt-cache depends linux-image-amd64 names no kernel"
KREL=${KPKG#linux-image-}

# Downloads package $1 into debs/ unless a .deb of it is there already;
# prints the .deb's path.
fetch_deb() {
    local pkg=$1 deb
    deb=$(ls "$GUEST_DIR/debs/${pkg}"_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
        say "apt-get download $pkg"
        # apt's _apt sandbox user cannot write a root-owned directory:
        # download as root without the sandbox warning.
        (cd "$GUEST_DIR/debs" \
            && apt-get download -qq -o APT::Sandbox::User=root "$pkg") \
            >&2 || fail "apt-get download $pkg failed"
        deb=$(ls "$GUEST_DIR/debs/${pkg}"_*.deb 2>/dev/null | head -n 1 \
            || true)
        [ -n "$deb" ] || fail "apt-get download $pkg left no .deb"
    fi
    echo "$deb"
}

KDEB=$(fetch_deb "$KPKG")
BBDEB=$(fetch_deb busybox-static)
T_DOWNLOAD=$((SECONDS - START))
# Keep only these two (an older kernel's .deb is 70 MB).
for deb in "$GUEST_DIR"/debs/*.deb; do
    if [ "$deb" != "$KDEB" ] && [ "$deb" != "$BBDEB" ]; then
        rm -f "$deb"
    fi
done

WORK=$(mktemp -d "$GUEST_DIR/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

say "extracting $KPKG"
MODULES=(
    kernel/drivers/input/evdev.ko
    kernel/drivers/acpi/button.ko
    kernel/drivers/misc/pvpanic/pvpanic.ko
    kernel/drivers/misc/pvpanic/pvpanic-mmio.ko
)
patterns=("./boot/vmlinuz-$KREL")
for m in "${MODULES[@]}"; do
    # Debian 12 ships plain .ko; later releases compress them.
    patterns+=("*/modules/$KREL/$m" "*/modules/$KREL/$m.xz")
done
mkdir "$WORK/kernel"
dpkg-deb --fsys-tarfile "$KDEB" \
    | tar -x -C "$WORK/kernel" --wildcards --no-anchored "${patterns[@]}" \
        2>/dev/null || true
[ -s "$WORK/kernel/boot/vmlinuz-$KREL" ] \
    || fail "boot/vmlinuz-$KREL not found in $KDEB"

ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,etc/acpi,lib/modules,run}
for m in "${MODULES[@]}"; do
    src=$(find "$WORK/kernel" -path "*/$m" -o -path "*/$m.xz" | head -n 1)
    [ -n "$src" ] || fail "$m not found in $KDEB"
    case "$src" in
        *.xz)
            xz -dc "$src" > "$ROOT/lib/modules/$(basename "$m")" \
                || fail "cannot decompress $src"
            ;;
        *) cp "$src" "$ROOT/lib/modules/" ;;
    esac
done

say "extracting busybox-static"
mkdir "$WORK/bb"
dpkg-deb -x "$BBDEB" "$WORK/bb"
[ -x "$WORK/bb/bin/busybox" ] || fail "bin/busybox not in $BBDEB"
cp "$WORK/bb/bin/busybox" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
    [ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done
# The kernel opens /dev/console for /init before devtmpfs is mounted.
if [ "$(id -u)" -eq 0 ]; then
    mknod -m 600 "$ROOT/dev/console" c 5 1
fi

cat > "$ROOT/init" <<'EOF'
#!/bin/sh
# nova-lifecycle test guest: PID 1, busybox sh.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

log() { echo "nova-lifecycle-guest: $*"; }

for m in evdev button pvpanic pvpanic-mmio; do
    insmod /lib/modules/$m.ko || log "insmod $m failed"
done
echo 1 > /proc/sys/kernel/sysrq

ACPI=honour
ACPI_IGNORE=0
POWEROFF_AFTER=
REBOOT_AFTER=
PANIC_AFTER=
for word in $(cat /proc/cmdline); do
    case "$word" in
        lc.acpi=*) ACPI=${word#*=} ;;
        lc.acpi_ignore=*) ACPI_IGNORE=${word#*=} ;;
        lc.poweroff_after=*) POWEROFF_AFTER=${word#*=} ;;
        lc.reboot_after=*) REBOOT_AFTER=${word#*=} ;;
        lc.panic_after=*) PANIC_AFTER=${word#*=} ;;
    esac
done
if [ "$ACPI" = ignore ]; then
    ACPI_IGNORE=-1
fi

# busybox acpid: it chdirs to the -c directory and runs the action named in
# the -a file as a path relative to it; it needs a writable log.
echo "$ACPI_IGNORE" > /etc/acpi/ignore
echo 0 > /tmp/presses
cat > /etc/acpi/power.sh <<'EOS'
#!/bin/sh
n=$(( $(cat /tmp/presses) + 1 ))
echo $n > /tmp/presses
ignore=$(cat /etc/acpi/ignore)
if [ "$ignore" -lt 0 ] || [ "$n" -le "$ignore" ]; then
    echo "nova-lifecycle-guest: power button press $n ignored"
else
    echo "nova-lifecycle-guest: power button press $n: powering off"
    poweroff -f
fi
EOS
chmod 755 /etc/acpi/power.sh
echo "PWRF power.sh" > /etc/acpi.map.actions
acpid -c /etc/acpi -a /etc/acpi.map.actions -l /dev/console
# A press before acpid has the event device open would be lost: "ready"
# only once it has (bounded: 5 s).
for i in $(seq 50); do
    pid=$(pidof acpid)
    [ -n "$pid" ] && ls -l /proc/$pid/fd 2>/dev/null \
        | grep -q /dev/input/event && break
    sleep 0.1
done

after() {
    (sleep "$1"; log "$2"; shift 2; "$@") &
}
[ -n "$POWEROFF_AFTER" ] && after "$POWEROFF_AFTER" "powering off" poweroff -f
[ -n "$REBOOT_AFTER" ] && after "$REBOOT_AFTER" "rebooting" reboot -f
[ -n "$PANIC_AFTER" ] && after "$PANIC_AFTER" "panicking" \
    sh -c 'echo c > /proc/sysrq-trigger'

log "ready acpi=$ACPI acpi_ignore=$ACPI_IGNORE" \
    "poweroff_after=$POWEROFF_AFTER reboot_after=$REBOOT_AFTER" \
    "panic_after=$PANIC_AFTER"
# PID 1 must never exit.
while :; do
    sleep 3600
done
EOF
chmod 755 "$ROOT/init"

say "packing initrd.img"
(cd "$ROOT" && find . -print0 \
    | cpio --null --quiet -o -H newc --owner 0:0 --reproducible) \
    | gzip -9 > "$WORK/initrd.img" || fail "cpio/gzip of the initramfs failed"

cp "$WORK/kernel/boot/vmlinuz-$KREL" "$WORK/vmlinuz"
# Replace the outputs only when complete; the hash last.
rm -f "$GUEST_DIR/build-hash"
mv "$WORK/vmlinuz" "$GUEST_DIR/vmlinuz"
mv "$WORK/initrd.img" "$GUEST_DIR/initrd.img"
echo "$KREL" > "$GUEST_DIR/kernel-release"
echo "$HASH" > "$GUEST_DIR/build-hash"
say "built $KREL guest in $((SECONDS - START)) s" \
    "(apt: $T_DOWNLOAD s) in $GUEST_DIR"
print_paths
