#!/usr/bin/env bash
# Counts the serializing operations per event of examples/profile_manager: atomic read-modify-writes
# (x86-64 `lock`-prefixed instructions and `xchg` with memory) and clock reads, by function; then the
# instructions and `memcpy` calls per event. On a machine where one uncontended atomic costs ~6 ns and a
# clock read ~30 ns, these set most of an event's time.
#
#   bash benches/lock_census.sh            # manager.process
#   bash benches/lock_census.sh tower      # the plain tower stack of the benches
#   bash benches/lock_census.sh hand       # the same layers as the manager, assembled by hand
#   CENSUS_TSC=1 bash benches/lock_census.sh   # manager.process measuring with the time-stamp counter
#
# Needs valgrind and objdump (x86-64 only). Runs the example under callgrind with 100,000 and 200,000
# events and prints the difference per event, so start-up work cancels out.
set -euo pipefail
mode="${1:-}"
cd "$(dirname "$0")/.."
if [ -n "${CENSUS_TSC:-}" ]; then
  cargo build --release --features tsc-clock --example profile_manager >&2
  export PROFILE_TSC=1
else
  cargo build --release --example profile_manager >&2
fi
bin=target/release/examples/profile_manager
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
objdump -d --no-show-raw-insn "$bin" |
  awk '/^ +[0-9a-f]+:\t(lock |xchg +%[a-z0-9]+,-?(0x[0-9a-f]+)?\()/ { sub(":", "", $1); print $1 }' >"$work/locks"
for n in 100000 200000; do
  valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$work/cg.$n" "$bin" "$n" $mode >/dev/null 2>&1
done
# Per instruction address of the binary, the times it ran (call lines, which carry inclusive costs, are
# skipped); then the difference between the two runs, per function.
count() {
  awk '
    FNR == NR { lock[$1] = 1; next }
    /^ob=/ { ours = index($0, "profile_manager") > 0; next }
    /^fn=/ { fn = substr($0, 4); next }
    /^calls=/ { skip = 1; next }
    /^0x/ {
      if (skip) { skip = 0; next }
      addr = substr($1, 3); sub(/^0+/, "", addr)
      if (ours && (addr in lock)) runs[fn] += $3
      next
    }
    END { for (f in runs) print runs[f] "\t" f }
  ' "$work/locks" "$1"
}
count "$work/cg.100000" | sort -t$'\t' -k2 >"$work/a"
count "$work/cg.200000" | sort -t$'\t' -k2 >"$work/b"
join -t$'\t' -1 2 -2 2 -a 2 -e 0 -o 0,1.1,2.1 "$work/a" "$work/b" |
  awk -F'\t' '{ d = ($3 - $2) / 100000; if (d >= 0.05) { printf "%6.2f  %s\n", d, substr($1, 1, 130); total += d } }
             END { printf "%6.2f  atomic read-modify-writes per event in all\n", total }' | sort -rn
# Calls into functions whose name holds $1 (from any caller), in callgrind output $2.
calls_into() {
  awk -v name="$1" '/^cfn=/ { into = index($0, name) > 0; next }
       /^calls=/ { if (into) { split(substr($0, 7), c, " "); n += c[1] }; into = 0; next }
       END { print n + 0 }' "$2"
}
# Per event: the difference between the two runs' counts ($1, $2), with a label ($3).
per_event() {
  awk -v a="$1" -v b="$2" -v label="$3" -v digits="${4:-2}" \
    'BEGIN { printf "%6." digits "f  %s\n", (b - a) / 100000, label }'
}
# Clock reads: the calls into libc's clock_gettime.
per_event "$(calls_into clock_gettime "$work/cg.100000")" "$(calls_into clock_gettime "$work/cg.200000")" \
  "clock reads (clock_gettime) per event"
# Instructions (the run's total) and calls into memcpy (a move of more than 128 bytes).
per_event "$(awk '/^summary:/ { print $2 }' "$work/cg.100000")" "$(awk '/^summary:/ { print $2 }' "$work/cg.200000")" \
  "instructions per event" 0
per_event "$(calls_into memcpy "$work/cg.100000")" "$(calls_into memcpy "$work/cg.200000")" \
  "memcpy calls per event"
