#!/usr/bin/env bash
# Builds Debian packages of faultline-agent for arm64 and armhf from the binaries
# cross-config/build.sh made, with plain dpkg-deb (no cargo-deb to compile).
#
#   bash cross-config/build.sh && bash cross-config/package.sh
#   bash cross-config/package.sh armv7-unknown-linux-gnueabihf     # one only
#
# Each package carries:
#   /usr/bin/faultline-agent                      the static binary
#   /lib/systemd/system/faultline-agent.service   the hardened unit
#   /etc/faultline/agent.toml                     example config (a conffile)
#   /usr/share/doc/faultline-agent/               copyright, every-key example, OpenWrt init
# and maintainer scripts that create the `faultline` system user, enable the unit on
# first install (started once the config is edited) and restart it on upgrade.
# Output: $DEB_DIR (default $CARGO_TARGET_DIR/deb), printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
TARGETS=("${@:-${ALL_TARGETS[@]}}")
PROFILE=${PROFILE:-agent}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
DEB_DIR=${DEB_DIR:-$TARGET_DIR/deb}
VERSION=$(awk -F'"' '/^\[workspace.package\]/ { p = 1 } p && /^version *=/ { print $2; exit }' Cargo.toml)
[[ -n $VERSION ]] || { echo "no version in Cargo.toml [workspace.package]" >&2; exit 1; }

deb_arch() {
    case $1 in
        aarch64-*) echo arm64 ;;
        armv7-*) echo armhf ;;
        *) echo "no Debian architecture for $1" >&2; exit 2 ;;
    esac
}

write_scripts() {
    local debian=$1
    cat >"$debian/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd faultline >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/faultline --no-create-home \
            --shell /usr/sbin/nologin --comment "Faultline agent" faultline
    fi
    # The config may hold broker credentials: readable by the agent's group only.
    chown root:faultline /etc/faultline /etc/faultline/agent.toml
    chmod 0750 /etc/faultline
    chmod 0640 /etc/faultline/agent.toml
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        if [ -z "$2" ]; then
            systemctl enable faultline-agent.service >/dev/null 2>&1 || true
            echo "faultline-agent: edit /etc/faultline/agent.toml, check it with"
            echo "  faultline-agent check --config /etc/faultline/agent.toml"
            echo "then start it: systemctl start faultline-agent"
        else
            systemctl try-restart faultline-agent.service >/dev/null || true
        fi
    fi
fi
exit 0
EOF
    cat >"$debian/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop faultline-agent.service >/dev/null 2>&1 || true
fi
exit 0
EOF
    cat >"$debian/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
    systemctl disable faultline-agent.service >/dev/null 2>&1 || true
    rm -rf /var/lib/faultline
    if getent passwd faultline >/dev/null; then
        userdel faultline >/dev/null 2>&1 || true
    fi
fi
exit 0
EOF
    chmod 0755 "$debian/postinst" "$debian/prerm" "$debian/postrm"
}

package() {
    local t=$1 arch bin root deb
    arch=$(deb_arch "$t")
    bin="$TARGET_DIR/$t/$PROFILE/faultline-agent"
    [[ -x $bin ]] || { echo "$bin missing: run cross-config/build.sh $t first" >&2; exit 1; }
    root=$(mktemp -d)
    chmod 0755 "$root"
    trap 'rm -rf "$root"' RETURN

    install -D -m 0755 "$bin" "$root/usr/bin/faultline-agent"
    install -D -m 0644 cross-config/faultline-agent.service \
        "$root/lib/systemd/system/faultline-agent.service"
    install -D -m 0640 cross-config/agent.toml "$root/etc/faultline/agent.toml"
    install -D -m 0644 agent/agent.example.toml \
        "$root/usr/share/doc/faultline-agent/examples/agent.example.toml"
    install -D -m 0644 cross-config/openwrt/faultline-agent.init \
        "$root/usr/share/doc/faultline-agent/examples/openwrt-faultline-agent.init"
    cat >"$root/usr/share/doc/faultline-agent/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: faultline
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF

    mkdir -p "$root/DEBIAN"
    echo /etc/faultline/agent.toml >"$root/DEBIAN/conffiles"
    write_scripts "$root/DEBIAN"
    cat >"$root/DEBIAN/control" <<EOF
Package: faultline-agent
Version: $VERSION
Architecture: $arch
Maintainer: Faultline maintainers <faultline@example.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: passwd
Section: net
Priority: optional
Homepage: https://example.invalid/faultline
Description: VoIP path monitoring agent for gateways
 Faultline's gateway agent measures voice-grade latency, jitter, loss and MOS
 toward the local gateway, the ISP, the internet and each VoIP provider, and
 publishes one small report per window over MQTT to the MSP's collector. It
 also runs a STAMP (RFC 8762) reflector and one-off probes for technicians.
 .
 Static binary built for $t; runs as the unprivileged
 user faultline with only CAP_NET_RAW (for ICMP).
EOF
    mkdir -p "$DEB_DIR"
    deb="$DEB_DIR/faultline-agent_${VERSION}_${arch}.deb"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
    echo "$deb"
}

for t in "${TARGETS[@]}"; do
    package "$t"
done
