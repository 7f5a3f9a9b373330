#!/usr/bin/env bash
# Issue 2's figure with SIPp as the only client: the highest tried rate at which every call completes,
# SIPp UAC straight to a SIPp UAS next to SIPp UAC -> fsroute (2 shards, round-robin) -> 2 SIPp UAS,
# in one run, each step a fresh SIPp run of SECS seconds. Loopback only.
# Usage: bench/scripts/sipp-direct-vs-fsroute.sh [seconds] [rates...]   (cargo build --release first)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-4}; shift || true
RATES=${*:-"1000 2000 3000 4000 5000 6000 8000"}
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SIP=$(port); ADMIN=$(port); A=$(port); B=$(port)
sipp -sn uas -i 127.0.0.1 -p "$A" -nostdin >/dev/null 2>&1 &
sipp -sn uas -i 127.0.0.1 -p "$B" -nostdin >/dev/null 2>&1 &
printf '[proxy]\nlisten = ["127.0.0.1:%s"]\nshards = 2\n[control]\nadmin = "127.0.0.1:%s"\n' "$SIP" "$ADMIN" > "$WORK/fs.toml"
for p in $A $B; do printf '[[dispatcher]]\nsetid = 1\ndestination = "sip:127.0.0.1:%s"\nweight = 1\n' "$p" >> "$WORK/fs.toml"; done
printf '[[route]]\nto_dispatcher = 1\nalgorithm = "round-robin"\n' >> "$WORK/fs.toml"
target/release/fsroute run --config "$WORK/fs.toml" 2>"$WORK/fs.log" &
sleep 1
step() { # $1 target, $2 rate -> "ok failed"
  local calls=$(( $2 * SECS ))
  (cd "$WORK" && sipp "$1" -sn uac -i 127.0.0.1 -p "$(port)" -r "$2" -m "$calls" -l $(( $2 * 4 )) -nostdin \
      -trace_screen -screen_file "$WORK/screen" -timeout $(( SECS + 20 ))s >/dev/null 2>&1) || true
  local ok fail
  ok=$(grep -E '^ *Successful call' "$WORK/screen" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  fail=$(grep -E '^ *Failed call' "$WORK/screen" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  echo "${ok:-0} ${fail:-?} $calls"
}
best_direct=0; best_fs=0
printf '%-8s  %-28s  %-28s\n' "rate" "SIPp -> SIPp (direct)" "SIPp -> fsroute -> SIPp"
for r in $RATES; do
  read -r dok dfail dcalls <<<"$(step 127.0.0.1:$A "$r")"
  read -r fok ffail fcalls <<<"$(step 127.0.0.1:$SIP "$r")"
  printf '%-8s  %-28s  %-28s\n' "$r/s" "$dok/$dcalls ok, $dfail failed" "$fok/$fcalls ok, $ffail failed"
  [ "$dfail" = 0 ] && [ "$dok" = "$dcalls" ] && best_direct=$r
  [ "$ffail" = 0 ] && [ "$fok" = "$fcalls" ] && best_fs=$r
done
echo "highest rate with every call completed: direct ${best_direct}/s, through fsroute ${best_fs}/s"
