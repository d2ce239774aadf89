#!/usr/bin/env bash
# What takes the space in the gateway agent: builds faultline-agent once more with
# symbols kept (profile `agent-syms` = `agent` without strip, defined on the command
# line so Cargo.toml stays as it is), then sums symbol sizes per crate with nm, the
# way cargo-bloat's --crates does, and lists the biggest symbols and ELF sections.
#
#   bash cross-config/bloat.sh                                # armv7
#   bash cross-config/bloat.sh aarch64-unknown-linux-musl
#
# After fat LTO, inlined code is counted in the function it was inlined into, so
# per-crate figures are approximate (as with cargo-bloat).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${1:-armv7-unknown-linux-gnueabihf}
TOP=${TOP:-25}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
case $TARGET in
    armv7-*) NM=arm-linux-gnueabihf-nm SIZE=arm-linux-gnueabihf-size ;;
    aarch64-*) NM=aarch64-linux-gnu-nm SIZE=aarch64-linux-gnu-size ;;
    *) echo "unknown target $TARGET" >&2; exit 2 ;;
esac
command -v "$NM" >/dev/null || { NM=nm; SIZE=size; }

cargo --config cross-config/config.toml --config cross-config/release.toml \
    --config 'profile.agent-syms.inherits="agent"' --config 'profile.agent-syms.strip=false' \
    build -q --profile agent-syms -p faultline-agent --target "$TARGET"
bin="$TARGET_DIR/$TARGET/agent-syms/faultline-agent"
stripped="$TARGET_DIR/$TARGET/agent/faultline-agent"

echo "## $TARGET"
echo
echo "binary with symbols: $(stat -c %s "$bin") bytes"
[[ -f $stripped ]] && echo "stripped (agent profile): $(stat -c %s "$stripped") bytes"
echo
echo "### ELF sections (bytes)"
echo
echo '```'
"$SIZE" -A "$bin" | awk '$2 > 4096 && $1 ~ /^\./ { printf "%-22s %9d\n", $1, $2 }'
echo '```'

# nm: size, type, demangled name. Code and read-only data only.
symbols=$("$NM" -S --size-sort --radix=d -C "$bin" | awk '$3 ~ /^[tTrRdD]$/')

echo
echo "### Per crate (code + data symbols; top $TOP)"
echo
echo '| crate | bytes | share |'
echo '|---|---:|---:|'
awk '
{
    size = $2 + 0
    $1 = ""; $2 = ""; $3 = ""
    name = substr($0, 4)
    sub(/^(<|&|\*const |\*mut |_<)+/, "", name)
    if (name ~ /^ring_core_/ || name ~ /^(GFp_|bn_|ecp_|x25519_|ChaCha20|CRYPTO_|aes_)/) crate = "ring (C/asm)"
    else if (index(name, "::") > 0) { crate = substr(name, 1, index(name, "::") - 1); sub(/<.*/, "", crate) }
    else crate = "[C: libc, compiler-rt]"
    total += size
    by[crate] += size
}
END {
    for (c in by) printf "%d\t%s\n", by[c], c
    printf "%d\t__TOTAL__\n", total
}' <<<"$symbols" | sort -rn | awk -F'\t' -v top="$TOP" '
    $2 == "__TOTAL__" { total = $1; next }
    { rows[++n] = $0 }
    END {
        for (i = 1; i <= n && i <= top; i++) {
            split(rows[i], f, "\t")
            printf "| %s | %d | %.1f %% |\n", f[2], f[1], 100 * f[1] / total
        }
        printf "| (all symbols) | %d | 100 %% |\n", total
    }'

echo
echo "### Biggest symbols (top $TOP)"
echo
echo '```'
# awk stops printing rather than `head` closing the pipe (SIGPIPE under pipefail).
sort -k2,2nr <<<"$symbols" | awk -v top="$TOP" 'NR <= top { size = $2; $1 = ""; $2 = ""; $3 = ""; printf "%8d  %s\n", size, substr(substr($0, 4), 1, 110) }'
echo '```'
