#!/usr/bin/env bash
# cpu-irq-pinning.sh -- align a NIC's receive interrupts (and RPS/XPS) with fsroute's shard cores.
#
# Usage:
#   cpu-irq-pinning.sh --nic IFACE --shard-cpus LIST [options]        # dry run (default)
#   cpu-irq-pinning.sh --nic IFACE --shard-cpus LIST --apply [options]
#
#   --nic IFACE              the interface that carries SIP (e.g. ens1f0)
#   --shard-cpus LIST        the CPUs fsroute's shards run on, e.g. 0-5 or 0-3,8-11.
#                            THIS BUILD PINS SHARD i TO CPU i, so this must be 0..(shards-1);
#                            the script warns otherwise.
#   --strategy same|housekeeping
#                            same (default): RX queue IRQs spread over the shard CPUs.
#                            housekeeping: RX queue IRQs spread over --housekeeping-cpus.
#   --housekeeping-cpus LIST CPUs for IRQs/softirq in the housekeeping strategy (required there).
#   --rps auto|on|off        auto (default): RPS only when the NIC has fewer RX queues than IRQ
#                            CPUs; on: always; off: clear RPS.
#   --xps on|off             map shard CPUs to TX queues (default on).
#   --irq-regex REGEX        which of the device's IRQ names are queue IRQs (default covers
#                            the common drivers: *-TxRx-N, *-rx-N, mlx5_compN, virtioN-input.N ...)
#   --stop-irqbalance        with --apply: `systemctl disable --now irqbalance` (otherwise the
#                            script only tells you; irqbalance rewrites affinities every ~10 s).
#   --dry-run                show what would be written (default)
#   --apply                  write it (root)
#
# Which strategy wins:
#   same          Interrupt + softirq (driver RX, IP/UDP processing, socket enqueue) run on the
#                 shard cores. No cores are set aside, and a packet is usually processed on a
#                 core whose caches are already warm with network state. It costs shard time
#                 (softirq preempts the shard thread) and adds jitter under bursts. Wins on
#                 small and mid-size boxes (<= ~16 cores) and whenever cores are the bottleneck.
#                 Note: the kernel's REUSEPORT hash picks the shard socket independently of the
#                 NIC's RSS queue, so a packet taken on core A often lands in the socket of a shard
#                 on core B anyway -- "same" buys less locality than it does for TCP servers.
#   housekeeping  Interrupts and softirq on dedicated cores; shard cores only run shards. Every
#                 datagram crosses cores once (socket enqueue on the IRQ core, wake-up of the
#                 shard), but shards get predictable, uninterrupted time and the IRQ cores can be
#                 sized for the packet rate. Wins on large boxes at high packet rates, when
#                 /proc/net/softnet_stat shows time_squeeze on shard cores, or when tail latency
#                 matters more than total capacity. Put the housekeeping cores on the NIC's NUMA
#                 node and, ideally, on CPUs >= shards (this build pins shards to 0..shards-1).
#
# Scope and safety: reads and writes only /proc/irq/* and /sys/class/net/IFACE/* (plus
# `systemctl` for irqbalance, only with --stop-irqbalance). It never changes link state, queue
# counts, ethtool settings, addresses or routes. Everything written here is lost on reboot, on a
# driver reload and when the queue count changes (ethtool -L): run it at boot after the NIC is up
# (see tuning/README.md), and again after such changes.
#
# For testing against a fake tree, PROC_IRQ and SYS_NET may point elsewhere (and NCPUS may
# stand in for the CPU count).

set -euo pipefail

PROC_IRQ=${PROC_IRQ:-/proc/irq}
SYS_NET=${SYS_NET:-/sys/class/net}

nic=""
shard_list=""
hk_list=""
strategy="same"
rps_mode="auto"
xps_mode="on"
irq_regex='([Tt][Xx]-?[Rr][Xx]|[Rr][Xx]-?[Tt][Xx]|-rx-|-rx$|_comp[0-9]|-input\.|-fp-|-queue-|-[Tt]x-[Rr]x-)'
apply=0
stop_irqbalance=0

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
info() { printf '%s\n' "$*"; }

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
        --nic) nic=${2:?--nic needs a value}; shift 2 ;;
        --shard-cpus) shard_list=${2:?--shard-cpus needs a value}; shift 2 ;;
        --housekeeping-cpus) hk_list=${2:?--housekeeping-cpus needs a value}; shift 2 ;;
        --strategy) strategy=${2:?--strategy needs a value}; shift 2 ;;
        --rps) rps_mode=${2:?--rps needs a value}; shift 2 ;;
        --xps) xps_mode=${2:?--xps needs a value}; shift 2 ;;
        --irq-regex) irq_regex=${2:?--irq-regex needs a value}; shift 2 ;;
        --stop-irqbalance) stop_irqbalance=1; shift ;;
        --dry-run) apply=0; shift ;;
        --apply) apply=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ -n $nic ]] || die "--nic is required"
[[ -n $shard_list ]] || die "--shard-cpus is required"
[[ $nic =~ ^[A-Za-z0-9_.:@-]+$ && $nic != . && $nic != .. ]] || die "suspicious interface name: $nic"
case $strategy in same|housekeeping) ;; *) die "--strategy must be same or housekeeping" ;; esac
case $rps_mode in auto|on|off) ;; *) die "--rps must be auto, on or off" ;; esac
case $xps_mode in on|off) ;; *) die "--xps must be on or off" ;; esac
if [[ $strategy == housekeeping && -z $hk_list ]]; then
    die "--strategy housekeeping needs --housekeeping-cpus"
fi
if ((apply)) && ((EUID != 0)); then
    die "--apply needs root (writes to $PROC_IRQ and $SYS_NET)"
fi

# ---- CPU list helpers -----------------------------------------------------------------------

# "0-3,8,10-11" -> "0 1 2 3 8 10 11" (sorted, unique). Dies on malformed input.
expand_cpus() {
    local list=$1 part lo hi c
    local -a found_cpus=()
    local IFS=,
    for part in $list; do
        if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
            lo=$((10#${BASH_REMATCH[1]})); hi=$((10#${BASH_REMATCH[2]}))
            ((lo <= hi)) || die "bad CPU range: $part"
            for ((c = lo; c <= hi; c++)); do found_cpus+=("$c"); done
        elif [[ $part =~ ^[0-9]+$ ]]; then
            found_cpus+=("$((10#$part))")
        else
            die "bad CPU list: $list"
        fi
    done
    ((${#found_cpus[@]})) || die "empty CPU list"
    printf '%s\n' "${found_cpus[@]}" | sort -n -u | tr '\n' ' '
}

# CPU numbers -> compact list "0-3,8,10-11"
compact_cpus() {
    local out="" start="" prev="" c
    for c in "$@"; do
        if [[ -z $start ]]; then
            start=$c; prev=$c
        elif ((c == prev + 1)); then
            prev=$c
        else
            if ((start == prev)); then out+="$start,"; else out+="$start-$prev,"; fi
            start=$c; prev=$c
        fi
    done
    if [[ -n $start ]]; then
        if ((start == prev)); then out+="$start"; else out+="$start-$prev"; fi
    fi
    printf '%s' "$out"
}

# CPU numbers -> hex bitmap in the kernel's format: 32-bit words, most significant first,
# comma-separated ("ff,0000000f"). No arguments -> "0".
cpus_to_mask() {
    local -a words=()
    local c w max=0 i out=""
    for c in "$@"; do
        w=$((c / 32))
        words[w]=$(( ${words[w]:-0} | (1 << (c % 32)) ))
        if ((w > max)); then max=$w; fi
    done
    for ((i = max; i >= 0; i--)); do
        if ((i == max)); then
            out+=$(printf '%x' "${words[i]:-0}")
        else
            out+=$(printf ',%08x' "${words[i]:-0}")
        fi
    done
    printf '%s' "$out"
}

# ---- inputs ---------------------------------------------------------------------------------

# Plain assignments first, so a malformed list stops the script (set -e) instead of being
# swallowed inside a here-string.
expanded=$(expand_cpus "$shard_list")
read -r -a shard_cpus <<< "$expanded"
nshards=${#shard_cpus[@]}
hk_cpus=()
if [[ -n $hk_list ]]; then
    expanded=$(expand_cpus "$hk_list")
    read -r -a hk_cpus <<< "$expanded"
fi

ncpu_conf=${NCPUS:-$(getconf _NPROCESSORS_CONF)}
for c in "${shard_cpus[@]}" "${hk_cpus[@]}"; do
    ((c < ncpu_conf)) || die "CPU $c does not exist (this machine has CPUs 0-$((ncpu_conf - 1)))"
done
for c in "${hk_cpus[@]}"; do
    for s in "${shard_cpus[@]}"; do
        ((c != s)) || die "CPU $c is in both --shard-cpus and --housekeeping-cpus"
    done
done

# This build: shard i is pinned to CPU i (glommio Placement::Fixed(i)).
pinned_cpus=()
for ((i = 0; i < nshards; i++)); do pinned_cpus+=("$i"); done
expected=$(compact_cpus "${pinned_cpus[@]}")
actual=$(compact_cpus "${shard_cpus[@]}")
if [[ $expected != "$actual" ]]; then
    warn "fsroute pins shard i to CPU i, so $nshards shards run on CPUs $expected, not $actual."
    warn "IRQ/RPS/XPS placement below follows --shard-cpus=$actual as given; make them agree."
fi

if [[ $strategy == same ]]; then
    irq_cpus=("${shard_cpus[@]}")
else
    irq_cpus=("${hk_cpus[@]}")
fi
nirq_cpus=${#irq_cpus[@]}

dev_dir="$SYS_NET/$nic"
[[ -d $dev_dir ]] || die "no such interface: $dev_dir"
[[ -d $dev_dir/device ]] || die "$nic has no backing device (virtual interface?): pin the IRQs of its physical NIC instead"
[[ -d $PROC_IRQ ]] || die "$PROC_IRQ not found"

# NUMA locality: the NIC's local CPUs, as the kernel reports them.
if [[ -r $dev_dir/device/local_cpulist ]]; then
    read -r local_list < "$dev_dir/device/local_cpulist"
    expanded=$(expand_cpus "$local_list")
    read -r -a local_cpus <<< "$expanded"
    numa_node="?"
    if [[ -r $dev_dir/device/numa_node ]]; then read -r numa_node < "$dev_dir/device/numa_node"; fi
    for c in "${shard_cpus[@]}" "${hk_cpus[@]}"; do
        found=0
        for l in "${local_cpus[@]}"; do
            if ((l == c)); then found=1; break; fi
        done
        ((found)) || warn "CPU $c is not local to $nic (NUMA node $numa_node, local CPUs $local_list): every packet crosses the interconnect"
    done
fi

# ---- find the NIC's queue IRQs ---------------------------------------------------------------

# IRQ numbers of the device: MSI/MSI-X vectors listed by the PCI device.
dev_irqs=()
if [[ -d $dev_dir/device/msi_irqs ]]; then
    for f in "$dev_dir"/device/msi_irqs/*; do
        if [[ -e $f ]]; then dev_irqs+=("${f##*/}"); fi
    done
fi

# Action names live in /proc/irq/N/<name>/ (one directory per handler).
irq_name() {
    local d n=""
    for d in "$PROC_IRQ/$1"/*/; do
        [[ -d $d ]] || continue
        d=${d%/}; n+="${d##*/} "
    done
    printf '%s' "${n% }"
}

# Fallback without msi_irqs (legacy INTx; virtio-net, whose vectors belong to the parent PCI
# function and are named after the virtio device, e.g. "virtio2-input.0"): any IRQ whose handler
# name contains the interface or device name as a whole word ("eth1" must not match "eth10-TxRx-0").
if ((${#dev_irqs[@]} == 0)); then
    dev_base=$(readlink "$dev_dir/device" || true)
    dev_base=${dev_base##*/}
    for d in "$PROC_IRQ"/[0-9]*; do
        n=${d##*/}
        name="-$(irq_name "$n")-"
        if [[ $name == *[!A-Za-z0-9]"$nic"[!A-Za-z0-9]* ]] ||
            [[ -n $dev_base && $name == *[!A-Za-z0-9]"$dev_base"[!A-Za-z0-9]* ]]; then
            dev_irqs+=("$n")
        fi
    done
fi
((${#dev_irqs[@]})) || die "no IRQs found for $nic under $dev_dir/device/msi_irqs or $PROC_IRQ"

# Keep queue IRQs only (drop admin/async/link vectors), sort by name so queue 0,1,2... come in
# order (version sort handles "-TxRx-10" after "-TxRx-9").
queue_lines=()
skipped=()
for n in "${dev_irqs[@]}"; do
    name=$(irq_name "$n")
    if [[ -n $name && $name =~ $irq_regex ]]; then
        queue_lines+=("$name $n")
    else
        skipped+=("$n(${name:-unnamed})")
    fi
done
# Single-vector devices (INTx/MSI, no per-queue vectors) name their one IRQ after the interface.
if ((${#queue_lines[@]} == 0)); then
    for n in "${dev_irqs[@]}"; do
        if [[ $(irq_name "$n") == "$nic" ]]; then queue_lines+=("$nic $n"); fi
    done
    if ((${#queue_lines[@]} == 1)); then
        info "note: $nic has a single interrupt (no per-queue vectors); RPS does the spreading"
        mapfile -t skipped < <(printf '%s\n' "${skipped[@]}" | grep -v "^${queue_lines[0]##* }(" || true)
    else
        queue_lines=()
    fi
fi
if ((${#queue_lines[@]} == 0)); then
    die "none of $nic's IRQs matched --irq-regex; names seen: ${skipped[*]}"
fi
mapfile -t queue_lines < <(printf '%s\n' "${queue_lines[@]}" | sort -V)
queue_irqs=()
for l in "${queue_lines[@]}"; do queue_irqs+=("${l##* }"); done
nq_irqs=${#queue_irqs[@]}

rx_queues=()
tx_queues=()
for d in "$dev_dir"/queues/rx-*; do if [[ -d $d ]]; then rx_queues+=("${d##*/}"); fi; done
for d in "$dev_dir"/queues/tx-*; do if [[ -d $d ]]; then tx_queues+=("${d##*/}"); fi; done
if ((${#rx_queues[@]})); then mapfile -t rx_queues < <(printf '%s\n' "${rx_queues[@]}" | sort -V); fi
if ((${#tx_queues[@]})); then mapfile -t tx_queues < <(printf '%s\n' "${tx_queues[@]}" | sort -V); fi
nrx=${#rx_queues[@]}
ntx=${#tx_queues[@]}

# ---- plan + (dry-)run ------------------------------------------------------------------------

mode_label="DRY RUN (nothing is written; add --apply)"
if ((apply)); then mode_label="APPLY"; fi
info "== cpu-irq-pinning: $nic, strategy=$strategy, $mode_label"
info "   shard CPUs: $(compact_cpus "${shard_cpus[@]}")   IRQ CPUs: $(compact_cpus "${irq_cpus[@]}")"
info "   queue IRQs: $nq_irqs   RX queues: $nrx   TX queues: $ntx"
if ((${#skipped[@]})); then info "   not touched (not queue IRQs): ${skipped[*]}"; fi

changes=0
failures=0

# write PATH VALUE DESCRIPTION: show current -> new; write only with --apply and only if different.
write() {
    local path=$1 value=$2 what=$3 cur=""
    # Some attributes exist but refuse reads (xps_cpus on a single-queue device): skip those.
    if ! { [[ -r $path ]] && { read -r cur < "$path"; } 2> /dev/null; } && [[ -z $cur ]]; then
        info "   - $what: not readable/supported here, skipped"
        return 0
    fi
    if [[ $cur == "$value" ]]; then
        info "   = $what: $cur (unchanged)"
        return 0
    fi
    # Masks may be printed with leading zero words; compare numerically-ish by stripping them.
    local norm_cur norm_new
    norm_cur=$(printf '%s' "$cur" | tr -d ',' | sed 's/^0*//')
    norm_new=$(printf '%s' "$value" | tr -d ',' | sed 's/^0*//')
    if [[ $what == *mask* && $norm_cur == "$norm_new" ]]; then
        info "   = $what: $cur (unchanged)"
        return 0
    fi
    info "   ~ $what: $cur -> $value"
    changes=$((changes + 1))
    if ((apply)); then
        if ! printf '%s\n' "$value" > "$path" 2> /dev/null; then
            warn "$what: writing $path failed (managed IRQ or unsupported by the driver?)"
            failures=$((failures + 1))
        fi
    fi
}

info "-- RX/TX queue interrupts -> IRQ CPUs (round-robin, one CPU each)"
if ((nq_irqs > nirq_cpus)); then
    info "   note: $nq_irqs queue IRQs for $nirq_cpus CPUs, several queues share a CPU. Consider"
    info "         matching the queue count to the IRQ CPUs (ethtool -L $nic combined $nirq_cpus);"
    info "         this script does not do it: it resets the link."
fi
for i in "${!queue_irqs[@]}"; do
    irq=${queue_irqs[i]}
    cpu=${irq_cpus[i % nirq_cpus]}
    write "$PROC_IRQ/$irq/smp_affinity_list" "$cpu" "irq $irq ($(irq_name "$irq")) affinity_list"
done

info "-- RPS (software spreading of RX processing)"
use_rps=0
case $rps_mode in
    on) use_rps=1 ;;
    off) use_rps=0 ;;
    auto) if ((nrx < nirq_cpus)); then use_rps=1; fi ;;
esac
if ((nrx == 0)); then
    info "   no RX queues under $dev_dir/queues, skipped"
elif [[ ! -e $dev_dir/queues/${rx_queues[0]}/rps_cpus ]]; then
    info "   kernel built without RPS, skipped"
else
    if ((use_rps)); then
        info "   $nrx RX queue(s) for $nirq_cpus IRQ CPUs: every RX queue spreads over all IRQ CPUs"
        rps_mask=$(cpus_to_mask "${irq_cpus[@]}")
    else
        info "   enough RX queues (or --rps off): RPS cleared; it would only add inter-CPU hops"
        rps_mask=0
    fi
    for q in "${rx_queues[@]}"; do
        write "$dev_dir/queues/$q/rps_cpus" "$rps_mask" "$q rps_cpus mask"
    done
fi

info "-- XPS (which TX queue each shard CPU sends on)"
if [[ $xps_mode == off ]]; then
    info "   --xps off, skipped"
elif ((ntx <= 1)); then
    info "   $ntx TX queue(s): nothing to steer, skipped"
elif [[ ! -e $dev_dir/queues/${tx_queues[0]}/xps_cpus ]]; then
    info "   kernel/driver without XPS, skipped"
else
    # Shard k sends on TX queue k mod ntx: with combined queues and the "same" strategy, the
    # queue's completion interrupt then fires on the sending core.
    for qi in "${!tx_queues[@]}"; do
        cpus=()
        for k in "${!shard_cpus[@]}"; do
            if ((k % ntx == qi)); then cpus+=("${shard_cpus[k]}"); fi
        done
        write "$dev_dir/queues/${tx_queues[qi]}/xps_cpus" "$(cpus_to_mask "${cpus[@]}")" "${tx_queues[qi]} xps_cpus mask"
    done
fi

info "-- irqbalance"
irqb_active=0
if command -v systemctl > /dev/null 2>&1 && systemctl is-active --quiet irqbalance.service 2> /dev/null; then
    irqb_active=1
fi
if ((irqb_active)); then
    if ((stop_irqbalance && apply)); then
        info "   stopping and disabling irqbalance.service"
        systemctl disable --now irqbalance.service
    else
        warn "irqbalance is running and will move these IRQs again within seconds. Either"
        warn "  - stop it:  systemctl disable --now irqbalance   (or rerun with --stop-irqbalance --apply), or"
        warn "  - keep it for other devices but exclude this NIC's IRQs: in /etc/default/irqbalance set"
        warn "    IRQBALANCE_ARGS=\"$(for q in "${queue_irqs[@]}"; do printf -- '--banirq=%s ' "$q"; done)\""
        warn "    (IRQ numbers can change after reboot/driver reload -- regenerate when they do)"
    fi
else
    info "   not running (good)"
fi

info "-- fsroute settings matching this layout"
info "   shard CPU list:   $actual"
info "   fsroute.toml:     [proxy] shards = $nshards      (this build then pins shards to CPUs $expected)"
info "   fsroute.service:  CPUAffinity= unset is fine. If you set it, it must contain CPUs $expected"
info "                     (it only limits the control-plane thread and the \"available CPUs\" count;"
info "                     see the CPU placement notes in fsroute.service), e.g. CPUAffinity=$expected"

if ((apply)); then
    info "== done: $changes change(s) attempted, $failures failure(s)"
    ((failures == 0)) || exit 2
else
    info "== dry run: $changes change(s) would be made; rerun with --apply"
fi
