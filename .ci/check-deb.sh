#!/usr/bin/env bash
# Checks the Debian package `cargo deb` built (Cargo.toml [package.metadata.deb]) without
# installing it: the paths the unit and README promise are in it with the right modes, /etc holds
# the conffiles, the postinst creates the fsroute user, every path the systemd unit names is
# shipped, and the packaged binary is the production build and accepts the packaged config.
#   usage: .ci/check-deb.sh [PATH.deb]   (default: the newest fsroute_*.deb under the target dir)
set -euo pipefail
deb=${1:+$(realpath "$1")}
cd "$(dirname "$0")/.."

if [ -z "$deb" ]; then
    target=${CARGO_TARGET_DIR:-target}
    deb=$(ls -t "$target"/debian/fsroute_*.deb 2>/dev/null | head -1 || true)
fi
[ -n "$deb" ] && [ -f "$deb" ] || { echo "FAIL: no fsroute_*.deb found (run cargo deb first)" >&2; exit 1; }
echo "checking $deb"

fail=0
bad() { echo "FAIL: $*" >&2; fail=1; }

listing=$(dpkg-deb -c "$deb")
# path and expected mode, as dpkg-deb -c prints them
while read -r mode path; do
    line=$(awk -v p="$path" '$6 == p' <<<"$listing")
    if [ -z "$line" ]; then
        bad "$path is not in the package"
    elif [ "$(awk '{print $1}' <<<"$line")" != "$mode" ]; then
        bad "$path has mode $(awk '{print $1}' <<<"$line"), expected $mode"
    elif ! grep -qxE '0/0|root/root' <<<"$(awk '{print $2}' <<<"$line")"; then
        bad "$path is not owned by root in the archive"
    fi
done <<'EOF'
-rwxr-xr-x ./usr/bin/fsroute
-rw-r----- ./etc/fsroute/fsroute.toml
-rw-r--r-- ./etc/fsroute/fsroute.env
-rw-r--r-- ./usr/lib/systemd/system/fsroute.service
-rw-r--r-- ./usr/lib/sysctl.d/90-fsroute.conf
-rw-r--r-- ./usr/share/doc/fsroute/copyright
-rw-r--r-- ./usr/share/doc/fsroute/grafana/fsroute.json
EOF

conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles 2>/dev/null || true)
for f in /etc/fsroute/fsroute.toml /etc/fsroute/fsroute.env; do
    grep -qx "$f" <<<"$conffiles" || bad "$f is not a conffile"
done
depends=$(dpkg-deb -f "$deb" Depends)
grep -qw adduser <<<"$depends" || bad "Depends ($depends) lacks adduser, which the postinst needs"
postinst=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst 2>/dev/null || true)
grep -q 'adduser --system --group' <<<"$postinst" || bad "the postinst does not create the fsroute system user"
grep -q 'chown root:fsroute /etc/fsroute/fsroute.toml' <<<"$postinst" || bad "the postinst does not give the config to group fsroute"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"

# Every absolute path the unit runs or reads must come with the package (or be the system's kill).
unit="$tmp/usr/lib/systemd/system/fsroute.service"
while read -r path; do
    case "$path" in
        /bin/kill) ;;
        *) [ -e "$tmp$path" ] || bad "the unit names $path, which the package does not ship" ;;
    esac
done < <(grep -E '^(ExecStartPre|ExecStart|ExecReload|EnvironmentFile)=' "$unit" | sed -E 's/^[A-Za-z]+=-?//' | tr ' ' '\n' | grep '^/' | sort -u)
grep -q '^User=fsroute$' "$unit" || bad "the unit does not run as the fsroute user"

bin="$tmp/usr/bin/fsroute"
# The production build: no demo subcommand, so neither the bench harness nor the emulator.
if "$bin" demo >/dev/null 2>&1 || "$bin" --help | grep -qw demo; then
    bad "the packaged fsroute has the demo subcommand: not built with --no-default-features"
fi
"$bin" ctl --help >/dev/null || bad "the packaged fsroute has no ctl subcommand"
if ! out=$("$bin" check --config "$tmp/etc/fsroute/fsroute.toml" 2>&1); then
    bad "the packaged config fails fsroute check:"
    echo "$out" >&2
fi

[ "$fail" -eq 0 ] || exit 1
echo "ok: $(wc -l <<<"$listing") entries; binary, unit, sysctl file, conffiles, postinst user, config passes fsroute check"
