#!/usr/bin/env bash
# Issue 4's closing-note figures, reproducible: calls/s through a load_balancer route vs a dispatcher
# route in the same run (same emulated boxes, same SIPp load, fsroute restarted between), and PDD
# (INVITE -> 180, SIPp "Response Time 1" with pdd_uac.xml) with and without a failover.
# Loopback only. Usage: bench/scripts/lb-vs-dispatcher.sh [rate] [seconds]
# Build first: cargo build --release && cargo build --release -p fsroute-fsemu --bin fsemu
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${1:-2000}; SECS=${2:-10}; BIN=target/release
WORK=$(mktemp -d); cp bench/scripts/pdd_uac.xml "$WORK/"; trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SIP=$(port); ADMIN=$(port); A=$(port); B=$(port)
uas() { sipp -sn uas -i 127.0.0.1 -p "$1" -nostdin >/dev/null 2>&1 & }
emu() { $BIN/fsemu --sip 127.0.0.1:$1 --esl 127.0.0.1:0 --max-sessions 100000 --hold 600s --answer-delay 100ms --heartbeat 1s "${@:2}" >/dev/null 2>&1 & }
cfg() { # $1 = dispatcher|lb, $2 = failover true|false
  printf '[proxy]\nlisten = ["127.0.0.1:%s"]\nshards = 2\n[control]\nadmin = "127.0.0.1:%s"\n[failover]\ncodes = [503]\nmax_attempts = 2\n' $SIP $ADMIN
  if [ "$1" = dispatcher ]; then
    for p in $A $B; do printf '[[dispatcher]]\nsetid = 1\ndestination = "sip:127.0.0.1:%s"\nweight = 1\n' $p; done
    printf '[[route]]\nto_dispatcher = 1\nalgorithm = "round-robin"\nfailover = %s\n' "$2"
  else
    for p in $A $B; do printf '[[load_balancer]]\ngroup_id = 1\ndst_uri = "sip:127.0.0.1:%s"\nresources = "ch=100000"\n' $p; done
    printf '[[route]]\nto_load_balancer = 1\nresources = "ch"\n'
  fi
}
run() { # $1 label, $2 config kind, $3 failover, $4 rate, $5 calls, $6 scenario flag...
  cfg "$2" "$3" > "$WORK/fs.toml"
  $BIN/fsroute run --config "$WORK/fs.toml" 2>"$WORK/fs.log" & local pid=$!
  sleep 1
  local t0; t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  rm -f "$WORK"/*_rtt.csv
  local sp; sp=$(port)
  (cd "$WORK" && sipp 127.0.0.1:$SIP "${@:6}" -i 127.0.0.1 -p "$sp" -r "$4" -m "$5" -l $(( $4 * 2 )) -nostdin \
      -trace_screen -screen_file "$WORK/screen" -trace_rtt -rtt_freq 1 -timeout $(( SECS + 40 ))s >/dev/null 2>&1) || true
  local t1; t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill -TERM $pid; wait $pid 2>/dev/null || true
  local ok fail rt
  ok=$(grep -E '^ *Successful call' "$WORK/screen" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  fail=$(grep -E '^ *Failed call' "$WORK/screen" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  # SIPp's rtt trace: one line per call, "Date_ms;response_time_ms;rtd_no"; percentiles in ms.
  rt=$( (cat "$WORK"/*_rtt.csv 2>/dev/null || true) | awk -F';' 'NR>1 && $2 != "" {print $2}' | sort -n | awk '{a[NR]=$1} END {if (NR) printf "p50 %.1f ms  p99 %.1f ms  (n=%d)", a[int(NR*0.5)+1], a[int(NR*0.99)+ (NR*0.99 == int(NR*0.99) ? 0 : 1)], NR}')
  local hz; hz=$(getconf CLK_TCK)
  printf '%-44s offered %5s/s x %5s  ok %6s  failed %5s  fsroute CPU/call %6s us  %s\n' "$1" "$4" "$5" "$ok" "$fail" \
      "$(( (t1 - t0) * 1000000 / hz / (ok > 0 ? ok : 1) ))" "${rt:+response time $rt}"
}
# Throughput: SIPp UAS backends (the emulator is a capacity model, not a load sink).
uas $A; uas $B; sleep 1
echo "== calls/s: dispatcher route vs load_balancer route (2 SIPp UAS, fsroute 2 shards, SIPp stock uac, $RATE/s for ${SECS}s)"
run "dispatcher round-robin" dispatcher false "$RATE" $(( RATE * SECS )) -sn uac
run "load_balancer (ch=100000 per box)" lb false "$RATE" $(( RATE * SECS )) -sn uac
kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true
# PDD: emulated FreeSWITCH boxes (answer delay 100 ms, 180 after a fifth of it).
A=$(port); B=$(port); emu $A; emu $B; sleep 1
echo "== PDD (INVITE -> 180) with and without failover, load_balancer route, 50 calls/s"
run "no failover (both boxes answer)" lb false 50 500 -sf pdd_uac.xml
kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true
A=$(port); B=$(port); emu $A --respond-503 always; emu $B; sleep 1
run "failover (first choice answers 503)" lb false 50 500 -sf pdd_uac.xml
