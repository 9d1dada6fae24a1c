# Shared by scripts/bench-backup, bench-restore, bench-verify and
# bench-docker: a temporary directory ($work, removed on exit), a throw-away
# PostgreSQL 15 server (scripts/throwaway-pg, socket only) in it, stopped on
# exit, unless BENCH_SERVER=no; db_sql, the SQL of a realistic database (URLs,
# titles, tags, jsonb events; zstd -3 shrinks its dump about 4x), and
# make_db, which builds one on that server; now, secs and median for timing.
# Expects PGBIN; sets work, and with the server port and the PG* variables.

work=$(mktemp -d /tmp/kdr-bench.XXXXXX)
# kompose-dr's state (what this "host" committed) stays in $work, never in
# the machine's /var/lib/kompose-dr; scripts that empty the repository
# between rounds empty it too (wipe_repo).
export KOMPOSE_DR_STATE_DIR=$work/state
wipe_repo() { rm -rf "$work/repo/data" "$work/repo/snapshots"/* "$KOMPOSE_DR_STATE_DIR"; }
cleanup() {
  if [ "${BENCH_SERVER:-yes}" != no ]; then
    PGBIN=$PGBIN scripts/throwaway-pg stop "$work" --immediate >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
if [ "${BENCH_SERVER:-yes}" != no ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  set -a
  eval "$(PGBIN=$PGBIN scripts/throwaway-pg start "$work" --port "$port" --socket-only \
    --user bench -c max_wal_size=4GB)"
  set +a
fi

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }

make_db() { # name rows
  psql -q -d postgres -c "CREATE DATABASE $1"
  db_sql "$2" | psql -q -d "$1"
}

db_sql() { # rows
  local rows=$1
  cat <<SQL
CREATE TABLE words (i int PRIMARY KEY, w text);
INSERT INTO words SELECT i, (ARRAY['kompose','linkwarden','traefik','postgres','redis','backup','restore','docker','compose','grafana','umami','keycloak','dashboard','release','notes','guide','howto','security','update','weekly','digest','archive','photo','travel','recipe','garden','music','video','project','design','rust','python','server','cloud','home','lab','network','storage','monitor','alert'])[1 + (i % 40)] || CASE WHEN i % 3 = 0 THEN '' ELSE '-' || (i % 97) END FROM generate_series(0, 3999) i;
CREATE TABLE "Link" (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  url text, title text, tags text[], created timestamptz, events jsonb);
INSERT INTO "Link" (url, title, tags, created, events)
SELECT 'https://' || w1.w || '.example.' || (ARRAY['org','com','net','io'])[1 + g % 4] || '/' || w2.w || '/' || (g::bigint * 7919 % 1000003) || '?ref=' || w3.w,
       initcap(w1.w) || ' ' || w2.w || ' ' || w3.w || ' — ' || (g % 1000) || ' ' || substr(md5(g::text), 1, 6),
       ARRAY[w2.w, w3.w, 'tag' || (g % 50)],
       timestamptz '2024-01-01' + (g * interval '17 seconds'),
       jsonb_build_object('views', g % 1013, 'clicks', g % 211, 'ua', w3.w || '/' || (g % 37),
                          'hist', jsonb_build_array(g % 17, g % 31, (g * 31) % 1009, substr(md5((g*3)::text), 1, 8)))
FROM generate_series(1, $rows) g
JOIN words w1 ON w1.i = g % 4000
JOIN words w2 ON w2.i = (g * 13) % 4000
JOIN words w3 ON w3.i = (g * 101) % 4000;
CREATE INDEX link_created ON "Link" (created);
CREATE INDEX link_url ON "Link" (url);
SQL
}


# WAL helpers of scripts/bench-cluster and bench-rpo.
wal_covered() { # repo: the newest covered_until of its WAL records, unix seconds (0.0: none)
  python3 - "$1" <<'PY'
import json, glob, sys, datetime
best = 0.0
for p in glob.glob(sys.argv[1] + "/wal/*/*/*.json"):
    try:
        c = json.load(open(p)).get("covered_until")
    except Exception:
        continue
    if c:
        best = max(best, datetime.datetime.fromisoformat(c.replace("Z", "+00:00")).timestamp())
print(best)
PY
}
utc_sql="to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
iso_epoch() { python3 -c "import sys,datetime as d; print(d.datetime.fromisoformat(sys.argv[1].replace('Z','+00:00')).timestamp())" "$1"; }

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_garage BUCKET: a throw-away single-node Garage (scripts/setup builds
# it; GARAGE_BIN overrides) in $work/garage on free loopback ports, block
# compression off (the archives are encrypted), one access key allowed on
# BUCKET. Sets garage_pid (the caller's EXIT trap kills it), s3port, and
# writes the key to $work/s3-id and $work/s3-secret (0600). As in bench-s3
# and tests/it/support/s3.rs.
start_garage() {
  local bin=${GARAGE_BIN:-${KOMPOSE_DR_TOOLS:-$HOME/.cache/kompose-dr/tools}/bin/garage}
  local rpcport adminport node key
  s3port=$(freeport); rpcport=$(freeport); adminport=$(freeport)
  mkdir -p "$work/garage"
  cat > "$work/garage/garage.toml" <<TOML
metadata_dir = "$work/garage/meta"
data_dir = "$work/garage/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpcport"
rpc_public_addr = "127.0.0.1:$rpcport"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3port"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$adminport"
TOML
  RUST_LOG=warn "$bin" -c "$work/garage/garage.toml" server > "$work/garage/log" 2>&1 &
  garage_pid=$!
  _g() { RUST_LOG=warn "$bin" -c "$work/garage/garage.toml" "$@"; }
  for _ in $(seq 100); do node=$(_g node id -q 2>/dev/null) && break; sleep 0.2; done
  for _ in $(seq 100); do _g layout assign -z dc1 -c 10G "${node%%@*}" >/dev/null 2>&1 && break; sleep 0.2; done
  _g layout apply --version 1 >/dev/null
  for _ in $(seq 50); do key=$(_g json-api CreateKey '{"name":"bench"}' 2>/dev/null) && break; sleep 0.3; done
  (umask 077
   echo "$key" | jq -r .accessKeyId > "$work/s3-id"
   echo "$key" | jq -r .secretAccessKey > "$work/s3-secret")
  for _ in $(seq 50); do _g bucket create "$1" >/dev/null 2>&1 && break; sleep 0.3; done
  _g bucket allow --read --write --owner "$1" --key "$(cat "$work/s3-id")" >/dev/null
}
