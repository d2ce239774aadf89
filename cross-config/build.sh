#!/usr/bin/env bash
# Builds static release binaries of faultline-agent for the ARM gateway targets with
# the workspace's size-tuned `agent` profile, and prints their sizes against the
# 2.0 MB budget (DESIGN.md).
#
#   bash cross-config/build.sh                 # both targets
#   bash cross-config/build.sh armv7-unknown-linux-gnueabihf
#   ENFORCE_BUDGET=1 bash cross-config/build.sh   # exit 3 when armv7 is over budget
#
# Needs: rustup targets (added here), a C cross compiler per target for ring (the
# agent's TLS): Debian's gcc-arm-linux-gnueabihf and gcc-aarch64-linux-gnu. Run as
# root with apt-get available, this script installs missing packages; otherwise it
# names them and stops. Binaries land in $CARGO_TARGET_DIR/<target>/agent/.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
TARGETS=("${@:-${ALL_TARGETS[@]}}")
PROFILE=${PROFILE:-agent}
# 2.0 MB, decimal: the stricter reading of the budget.
BUDGET=2000000
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

# Debian package providing each tool the build needs.
declare -A NEED_FOR=(
    [armv7-unknown-linux-gnueabihf]="arm-linux-gnueabihf-gcc:gcc-arm-linux-gnueabihf"
    [aarch64-unknown-linux-musl]="aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu"
)

ensure_tools() {
    local missing=() t tool pkg
    for t in "${TARGETS[@]}"; do
        [[ -n ${NEED_FOR[$t]:-} ]] || { echo "unknown target $t (known: ${ALL_TARGETS[*]})" >&2; exit 2; }
        tool=${NEED_FOR[$t]%%:*}
        pkg=${NEED_FOR[$t]##*:}
        command -v "$tool" >/dev/null || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            echo "installing: ${missing[*]}"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        else
            echo "missing cross compilers; install them with:" >&2
            echo "  sudo apt-get install ${missing[*]}" >&2
            exit 1
        fi
    fi
    local installed
    installed=$(rustup target list --installed)
    for t in "${TARGETS[@]}"; do
        grep -qx "$t" <<<"$installed" || rustup target add "$t"
    done
}

build() {
    local t=$1
    echo "=== cargo build --profile $PROFILE -p faultline-agent --target $t"
    cargo --config cross-config/config.toml --config cross-config/release.toml build --profile "$PROFILE" -p faultline-agent --target "$t"
}

size_table() {
    printf '\n%-32s %10s %8s %9s %8s  %s\n' target bytes MiB gzip budget verdict
    local t bin bytes gz pct verdict over=0
    for t in "${TARGETS[@]}"; do
        bin="$TARGET_DIR/$t/$PROFILE/faultline-agent"
        bytes=$(stat -c %s "$bin")
        gz=$(gzip -9 -c "$bin" | wc -c)
        pct=$((bytes * 100 / BUDGET))
        if ((bytes <= BUDGET)); then verdict=ok; else verdict=OVER; fi
        [[ $t == armv7-* && $verdict == OVER ]] && over=1
        printf '%-32s %10d %8s %9d %7d%%  %s\n' "$t" "$bytes" \
            "$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')" "$gz" "$pct" "$verdict"
    done
    printf '(budget: armv7, stripped, with TLS <= %d bytes; profile `%s`: opt-level z, fat LTO, panic=abort, stripped)\n' \
        "$BUDGET" "$PROFILE"
    if ((over)) && [[ -n ${ENFORCE_BUDGET:-} ]]; then
        echo "armv7 binary is over the size budget" >&2
        exit 3
    fi
}

ensure_tools
for t in "${TARGETS[@]}"; do
    build "$t"
done
size_table
