#!/usr/bin/env bash
# Installs what the embedded local stack needs on a Debian bookworm machine:
#   * apt packages: mosquitto, PostgreSQL 15 (+ server headers and cmake to build TimescaleDB), kcat
#   * TimescaleDB (Apache-only edition) built from the Debian trixie source package
#   * the Kafka broker jars, resolved by Maven from infra/kafka/pom.xml
# Idempotent and quick on a second run: every step is skipped when its result is present.
# Needs root (or sudo) for apt and for installing the TimescaleDB extension files.
# Cache (sources, builds, jars): ${CITYSTREAM_CACHE:-$HOME/.cache/citystream}
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CITYSTREAM_CACHE:-$HOME/.cache/citystream}"
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
APT_PACKAGES=(mosquitto mosquitto-clients postgresql-15 postgresql-server-dev-15 cmake chromium
              gcc make dpkg-dev xz-utils openjdk-17-jre-headless maven)
APT_OPTIONAL=(kcat)

log() { printf '[install] %s\n' "$*" >&2; }
SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi
export DEBIAN_FRONTEND=noninteractive

missing_packages() {
    local p
    for p in "$@"; do
        dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || echo "$p"
    done
}

stop_distro_services() {
    # We run our own mosquitto/postgres instances; the distro ones must not hold 1883/5432.
    if [ -d /run/systemd/system ]; then
        "${SUDO[@]}" systemctl disable --now mosquitto.service postgresql.service >/dev/null 2>&1 || true
    else
        if pgrep -x mosquitto >/dev/null && [ -x /etc/init.d/mosquitto ]; then
            "${SUDO[@]}" /etc/init.d/mosquitto stop >/dev/null 2>&1 || true
        fi
        if command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 *main .*online'; then
            "${SUDO[@]}" pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null; then
            "${SUDO[@]}" update-rc.d mosquitto disable >/dev/null 2>&1 || true
            "${SUDO[@]}" update-rc.d postgresql disable >/dev/null 2>&1 || true
        fi
    fi
}

install_apt() {
    local missing optional
    mapfile -t missing < <(missing_packages "${APT_PACKAGES[@]}")
    mapfile -t optional < <(missing_packages "${APT_OPTIONAL[@]}")
    if [ "${#missing[@]}" -eq 0 ] && [ "${#optional[@]}" -eq 0 ]; then
        log "apt packages present"
        return
    fi
    log "apt: installing ${missing[*]} ${optional[*]}"
    # Keep apt from starting the distro services (no-op where a policy already exists).
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        created_policy=1
    fi
    "${SUDO[@]}" apt-get update -qq
    if [ "${#missing[@]}" -gt 0 ]; then
        "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ "${#optional[@]}" -gt 0 ]; then
        "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${optional[@]}" >/dev/null \
            || log "optional packages not installed: ${optional[*]}"
    fi
    if [ "$created_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi
    stop_distro_services
}

debian_mirror() {
    # URI of the first non-security Debian source configured on this machine.
    local uri=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(awk '
            /^[[:space:]]*$/ { if (u != "" && !sec) { print u; exit } u=""; sec=0; next }
            /^URIs:/ { u=$2 }
            /^Suites:/ && /-security/ { sec=1 }
            END { if (u != "" && !sec) print u }' /etc/apt/sources.list.d/debian.sources | head -n1)"
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $0 !~ /security/ {
                   for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; exit } }' \
               /etc/apt/sources.list | head -n1)"
    fi
    [ -n "$uri" ] || { log "cannot find a Debian mirror in /etc/apt"; exit 1; }
    printf '%s\n' "$uri"
}

install_timescaledb() {
    local sharedir control
    sharedir="$("$PG_CONFIG" --sharedir)"
    control="$sharedir/extension/timescaledb.control"
    if [ -e "$control" ]; then
        log "timescaledb present ($control)"
        return
    fi
    local aptdir="$CACHE/apt-trixie-src" srcdir="$CACHE/timescaledb"
    mkdir -p "$aptdir/lists/partial" "$aptdir/sources.list.d" "$srcdir"
    printf 'deb-src %s trixie main\n' "$(debian_mirror)" >"$aptdir/sources.list"
    local apt_opts=(-o "APT::Sandbox::User=root" -o "Dir::Etc::SourceList=$aptdir/sources.list"
                    -o "Dir::Etc::SourceParts=$aptdir/sources.list.d"
                    -o "Dir::State::Lists=$aptdir/lists")
    if ! ls "$srcdir"/timescaledb_*.dsc >/dev/null 2>&1; then
        log "timescaledb: fetching the trixie source package"
        "${SUDO[@]}" apt-get "${apt_opts[@]}" update -qq
        (cd "$srcdir" && apt-get "${apt_opts[@]}" source --download-only timescaledb >/dev/null)
    fi
    local dsc tree
    dsc="$(ls "$srcdir"/timescaledb_*.dsc | sort -V | tail -n1)"
    tree="$srcdir/src"
    if [ ! -f "$tree/bootstrap" ]; then
        rm -rf "$tree"
        (cd "$srcdir" && dpkg-source --no-check -x "$dsc" "$tree" >/dev/null)
    fi
    log "timescaledb: building $(basename "$dsc" .dsc) (about 30 s)"
    (
        cd "$tree"
        rm -rf build
        ./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
            -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF -DPG_CONFIG="$PG_CONFIG" >build.log 2>&1 \
            || { tail -n 30 build.log >&2; exit 1; }
        make -C build -j"$(nproc)" >>build.log 2>&1 || { tail -n 30 build.log >&2; exit 1; }
        "${SUDO[@]}" make -C build install >>build.log 2>&1 || { tail -n 30 build.log >&2; exit 1; }
    )
    [ -e "$control" ] || { log "timescaledb build did not install $control"; exit 1; }
    log "timescaledb installed"
}

install_kafka() {
    local pom="$ROOT/infra/kafka/pom.xml" version dest
    version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n1)"
    dest="$CACHE/kafka-$version"
    if [ -f "$dest/.complete" ]; then
        log "kafka $version jars present ($dest/libs)"
        return
    fi
    log "kafka $version: resolving jars with maven"
    rm -rf "$dest"
    mkdir -p "$dest/libs"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$dest/libs" \
        -Dmdep.useRepositoryLayout=false >&2
    ls "$dest/libs"/kafka_2.13-"$version".jar >/dev/null
    date -u +%FT%TZ >"$dest/.complete"
    log "kafka $version jars in $dest/libs"
}

install_apt
install_timescaledb
install_kafka
log "done"
