#!/bin/bash
# Runs inside the container that tests/it/systemd_boot.rs boots (systemd as
# PID 1, a private network with loopback only), as the unit kdr-test.service
# started at boot. Plays a fresh Kompose host: the stack's servers and its
# backup directory with the stack's own dumps, then what an operator does
# (scripts/install, keys, the example configuration adapted, init), then
# starts the services the timers would start and records how each ended.
#
#   /kdr/src   the repository (read-only): scripts/install, systemd/, examples/
#   /kdr/bin   the kompose-dr binary cargo built (read-only)
#   /kdr/out   results (read-write): in: acme.json; out: result, *.journal,
#              steps.log
#
# Every line of /kdr/out/result is `KEY=value`; the test asserts on them.
# The container powers off at the end whatever happened.
set -uo pipefail
out=/kdr/out
exec >>"$out/steps.log" 2>&1
say() { echo "== $(date +%T.%N | cut -c1-12) $*"; }
res() { echo "$1" >>"$out/result"; }
trap 'res "driver_exit=$?"; systemctl --no-block poweroff' EXIT
set -e

say "the stack: PostgreSQL, Redis, Mosquitto, acme.json, secrets.env"
DB_PASSWORD=db-pw-$RANDOM$RANDOM
REDIS_PASSWORD=redis-pw-$RANDOM$RANDOM
install -d -m 0755 /opt/kompose
printf 'DB_PASSWORD=%s\nREDIS_PASSWORD=%s\n' "$DB_PASSWORD" "$REDIS_PASSWORD" >/opt/kompose/secrets.env
chmod 0600 /opt/kompose/secrets.env
systemctl start postgresql@15-main.service redis-server.service mosquitto.service
for _ in $(seq 100); do pg_isready -q -h /var/run/postgresql && break; sleep 0.1; done
runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 <<SQL
create role kompose superuser login password '$DB_PASSWORD';
create database keycloak; create database linkwarden; create database letterspace;
create database umami; create database grafana; create database kmps;
SQL
q() { runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
q keycloak 'create table realm (id text primary key); insert into realm values ($$master$$)'
q linkwarden 'create table "User" (id serial primary key, name text); insert into "User"(name) values ($$a$$), ($$b$$)'
q umami 'create table _prisma_migrations (id text); insert into _prisma_migrations values ($$1$$)'
q grafana 'create table migration_log (id serial, note text); insert into migration_log(note) values ($$init$$)'
q letterspace 'create table letters (id serial, body text); insert into letters(body) select md5(g::text) from generate_series(1, 1000) g'
q kmps 'create table items (id serial, v int); insert into items(v) select g from generate_series(1, 500) g'
redis-cli CONFIG SET requirepass "$REDIS_PASSWORD" >/dev/null
REDISCLI_AUTH=$REDIS_PASSWORD redis-cli SET session:1 alive >/dev/null
REDISCLI_AUTH=$REDIS_PASSWORD redis-cli SAVE >/dev/null
install -d -m 0755 /var/local/data/traefik/letsencrypt
install -m 0600 "$out/acme.json" /var/local/data/traefik/letsencrypt/acme.json

say "the stack's own backup directory, owned by another user, with its dumps"
useradd --system --no-create-home stackbackup
install -d -m 0750 -o stackbackup -g stackbackup /var/local/data/backups
for f in keycloak_20261101-030000.sql.gz kmps_20261101-030000.sql.gz kmps_20261102-030000.sql.gz; do
  echo "-- the stack's own dump $f" | gzip >"/var/local/data/backups/$f"
  chown stackbackup:stackbackup "/var/local/data/backups/$f"
  chmod 0640 "/var/local/data/backups/$f"
done
dumps_before=$(cd /var/local/data/backups && stat -c '%n %U %G %a %s %Y' *.sql.gz | sha256sum)
dir_before=$(stat -c '%U %G' /var/local/data/backups)

say "scripts/install"
install -D -m 0755 /kdr/bin/kompose-dr /root/kompose-dr-build/kompose-dr
KDR_BIN=/root/kompose-dr-build/kompose-dr /kdr/src/scripts/install
res "config_mode=$(stat -c '%U:%G %a' /etc/kompose-dr/kompose-dr.toml)"
res "credentials_mode=$(stat -c '%U:%G %a' /etc/kompose-dr/credentials)"

say "keys, made as on a safe machine, installed as the README says"
kompose-dr --config /nonexistent init --generate-key /root/kdr-key >/root/kdr-key.lines
install -m 0600 /root/kdr-key.sign /etc/kompose-dr/credentials/signing_key
install -m 0600 /root/kdr-key /etc/kompose-dr/identity.txt

say "the example configuration, adapted minimally: no Docker on this host"
cfg=/etc/kompose-dr/kompose-dr.toml
recipients=$(grep '^recipients = ' /root/kdr-key.lines)
public_key=$(grep '^public_key = ' /root/kdr-key.lines)
adapt_config() { # the adaptations, each a sed expression on one line
  sed -i \
    -e "s|^recipients = .*|$recipients|" \
    -e "s|^public_key = .*|$public_key|" \
    -e '/^# The offsite copy/,/^# object_lock/d' \
    -e 's|^container = "core-postgres"|url = "postgres://kompose@127.0.0.1:5432/postgres"|' \
    -e 's|^# password = "${DB_PASSWORD}"|password = "${DB_PASSWORD}"|' \
    -e 's|^container = "core-redis"|url = "redis://127.0.0.1:6379"\ndata_dir = "/var/lib/redis"|' \
    -e 's|^container = "core-mqtt"|url = "mqtt://127.0.0.1:1883"|' \
    -e 's|^runtime = "docker"|runtime = "process"|' \
    "$cfg"
}
cp "$cfg" /root/kompose-dr.toml.example
adapt_config
diff -u /root/kompose-dr.toml.example "$cfg" >"$out/config.diff" || true
res "config_diff_lines=$(grep -c '^[-+][^-+]' "$out/config.diff")"

# One service, started as the timer would start it; records how it ended.
run_unit() {
  local unit=$1 t0 t1
  t0=$(date +%s%N)
  systemctl start "$unit" || true
  t1=$(date +%s%N)
  res "$unit $(systemctl show -p Result -p ExecMainStatus "$unit" | tr '\n' ' ')ms=$(( (t1 - t0) / 1000000 ))"
  journalctl -q -o short-precise --no-pager -u "$unit" >"$out/$unit.journal" || true
}

say "kompose-dr-init.service: the repository beside the stack's dumps"
run_unit kompose-dr-init.service
say "kompose-dr-backup.service (the timer's), then prune (OnSuccess= starts it too)"
run_unit kompose-dr-backup.service
# OnSuccess= queued a prune: starting it joins that job (or runs another).
run_unit kompose-dr-prune.service
say "kompose-dr-drill.service"
# The stack drill needs a container engine, which this boot machine has
# not: tests/it/stack_drill.rs runs it against the private engine.
rm -f /etc/kompose-dr/restore-drills/kompose-quarterly-stack.toml
run_unit kompose-dr-drill.service

say "the timers, enabled as the README says"
systemctl enable --now kompose-dr-backup.timer kompose-dr-drill.timer 2>/dev/null || true
res "timers=$(systemctl is-active kompose-dr-backup.timer kompose-dr-drill.timer | tr '\n' ' ')"

say "what the services left"
res "snapshots=$(find /var/local/data/backups/snapshots -name '*.json' -not -name '*.tmp' 2>/dev/null | wc -l)"
res "reports=$(find /var/local/data/backups/reports -name '*.json' 2>/dev/null | wc -l)"
dumps_after=$(cd /var/local/data/backups && stat -c '%n %U %G %a %s %Y' *.sql.gz | sha256sum)
res "dumps_untouched=$([ "$dumps_before" = "$dumps_after" ] && echo yes || echo no)"
res "backups_dir_owner=$([ "$dir_before" = "$(stat -c '%U %G' /var/local/data/backups)" ] && echo kept || echo changed)"
res "backups_dir_group_acl=$(getfacl -cp /var/local/data/backups 2>/dev/null | grep '^group::' || true)"
res "failed_units=$(systemctl list-units --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')"
res "textfile=$(ls /var/lib/prometheus/node-exporter/kompose_dr.prom 2>/dev/null || echo none)"

say "sandbox probes: each service reads what its configuration names and nothing more"
# The same unit, its ExecStart= replaced by a probe (a runtime drop-in):
# the sandbox, user, capabilities and credentials are the shipped ones.
# `has FILE`: its content is readable; `hidden FILE`: it is not (unreadable,
# or an empty stand-in: InaccessiblePaths= mounts an empty inode, which
# CAP_DAC_READ_SEARCH may open but which holds nothing).
probe() {
  local unit=$1 d=/run/systemd/system/$1.d
  mkdir -p "$d"
  { echo 'set -eu'
    echo 'has() { grep -q . "$1" || { echo "cannot read $1"; exit 1; }; }'
    echo 'hidden() { if grep -q . "$1" 2>/dev/null || { test -d "$1" && ls -A "$1" 2>/dev/null | grep -q .; }; then echo "LEAK: $1"; exit 1; fi; }'
    echo 'writable() { touch "$1" && rm "$1" || { echo "cannot write $1"; exit 1; }; }'
    echo 'unwritable() { if touch "$1" 2>/dev/null; then echo "LEAK: wrote $1"; exit 1; fi; }'
    cat
    echo 'echo probe passed'
  } >"/run/kdr-probe-$unit.sh"
  printf '[Unit]\nOnSuccess=\n[Service]\nExecStart=\nExecStart=/bin/sh -x /run/kdr-probe-%s.sh\n' "$unit" >"$d/probe.conf"
  systemctl daemon-reload
  systemctl start "$unit" || true
  res "probe $unit $(systemctl show -p Result -p ExecMainStatus "$unit" | tr '\n' ' ')"
  journalctl -q -o cat --no-pager -u "$unit" --since=-10s >"$out/probe-$unit.journal" || true
  rm -rf "$d" "/run/kdr-probe-$unit.sh"
  systemctl daemon-reload
}
acme=/var/local/data/traefik/letsencrypt/acme.json
probe kompose-dr-backup.service <<EOF
has $acme; has /var/lib/redis/dump.rdb
has \$CREDENTIALS_DIRECTORY/signing_key; has \$CREDENTIALS_DIRECTORY/secrets.env
hidden /etc/kompose-dr/identity.txt; hidden /etc/kompose-dr/credentials/signing_key
hidden /etc/shadow; hidden /root
writable /var/local/data/backups/.probe; unwritable /etc/kdr-probe
EOF
probe kompose-dr-prune.service <<EOF
has \$CREDENTIALS_DIRECTORY/secrets.env; test ! -e \$CREDENTIALS_DIRECTORY/signing_key
hidden /opt/kompose/secrets.env; hidden $acme; hidden /var/lib/redis/dump.rdb
hidden /etc/kompose-dr/identity.txt; hidden /etc/shadow
writable /var/local/data/backups/.probe; unwritable /etc/kdr-probe
EOF
probe kompose-dr-drill.service <<EOF
has \$CREDENTIALS_DIRECTORY/identity.txt; test ! -e \$CREDENTIALS_DIRECTORY/signing_key
hidden /etc/kompose-dr/identity.txt; hidden /opt/kompose/secrets.env; hidden $acme
writable /var/local/data/backups/reports/.probe; unwritable /var/local/data/backups/snapshots/.probe
EOF

say "the agent starts and answers /healthz"
systemctl start kompose-dr-agent.service || true
health=none
for _ in $(seq 100); do
  if health=$(curl -fsS http://127.0.0.1:9731/healthz 2>/dev/null); then break; fi
  health=none
  sleep 0.1
done
res "agent_healthz=$(echo "$health" | head -c 200 | tr '\n' ' ')"
res "agent_active=$(systemctl is-active kompose-dr-agent.service || true)"
systemctl stop kompose-dr-agent.service || true
res "agent_stopped $(systemctl show -p Result -p ExecMainStatus kompose-dr-agent.service | tr '\n' ' ')"
journalctl -q -o short-precise --no-pager -u kompose-dr-agent.service >"$out/kompose-dr-agent.service.journal" || true

say "systemd-analyze security"
for u in backup prune drill agent init; do
  res "security_kompose-dr-$u=$(systemd-analyze security --no-pager kompose-dr-$u.service 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: *//p')"
done
say done
