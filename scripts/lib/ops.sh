# shellcheck shell=bash
# Shell functions shared by scripts/demo, scripts/demo-test, scripts/package-test
# and scripts/alerts-test: waiting on a condition with a deadline, free ports,
# child processes that never outlive the script, the CNCF registry, the
# repository's nginx files rendered with the same substitution points as the
# end-to-end tests (tests/e2e/harness.rs), one-layer OCI images, and skopeo
# with a configuration of its own. Source it; it sets no shell options.

# The repository's root.
ops_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

ops_log() { printf '%s\n' "$*" >&2; }
ops_die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# ops_wait_until DESCRIPTION SECONDS COMMAND...: runs COMMAND until it
# succeeds; fails naming DESCRIPTION once SECONDS have passed. The short pause
# between tries only spaces out the polls: the condition is what is waited for.
ops_wait_until() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      ops_log "timed out after ${seconds}s waiting for $what"
      return 1
    fi
    sleep 0.1
  done
}

# ops_port_in_use PORT: something accepts connections on 127.0.0.1:PORT.
ops_port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Ports handed out by ops_pick_port in this script, so two picks never collide.
ops_ports_taken=" "

# ops_pick_port PREFERRED: PREFERRED when nothing listens on it (0: none
# preferred), else a free port between 20000 and 29999.
ops_pick_port() {
  local port=$1 tries=0
  if [ "$port" -ne 0 ] && ! ops_port_in_use "$port" && [[ $ops_ports_taken != *" $port "* ]]; then
    ops_ports_taken+="$port "
    echo "$port"
    return 0
  fi
  while [ $tries -lt 200 ]; do
    port=$((20000 + RANDOM % 10000))
    tries=$((tries + 1))
    if ! ops_port_in_use "$port" && [[ $ops_ports_taken != *" $port "* ]]; then
      ops_ports_taken+="$port "
      echo "$port"
      return 0
    fi
  done
  ops_log "no free port found between 20000 and 29999"
  return 1
}

# ops_http_status URL [CURL ARGS...]: prints the HTTP status of a GET (000
# when nothing answered).
ops_http_status() {
  local url=$1
  shift
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" || true
}

ops_answers() {
  local status
  status=$(ops_http_status "$1")
  [ "$status" = "$2" ]
}

# --- child processes --------------------------------------------------------

ops_pids=()
ops_names=()

# ops_spawn NAME LOG COMMAND...: starts COMMAND in the background, its output
# in LOG. It gets SIGTERM when this script dies, however it dies (even
# SIGKILL), so no service of a script outlives it.
ops_spawn() {
  local name=$1 log=$2
  shift 2
  setpriv --pdeathsig TERM -- "$@" >"$log" 2>&1 &
  ops_pids+=("$!")
  ops_names+=("$name")
}

# ops_alive PID: the process exists and is not a zombie.
ops_alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

# ops_stop_all: SIGTERM to every spawned process (nginx, the registry and
# csel-auth all stop cleanly on it), up to 10 s for them to go, SIGKILL for
# what is left (with an nginx master's workers), then reaps them all.
ops_stop_all() {
  local i pid deadline left children
  for i in "${!ops_pids[@]}"; do
    kill -TERM "${ops_pids[$i]}" 2>/dev/null || true
  done
  deadline=$((SECONDS + 10))
  while :; do
    left=()
    for pid in "${ops_pids[@]}"; do
      ! ops_alive "$pid" || left+=("$pid")
    done
    [ ${#left[@]} -gt 0 ] && [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.1
  done
  for pid in "${left[@]}"; do
    children=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
    ops_log "still running after 10 s, killed: pid $pid $children"
    # shellcheck disable=SC2086
    kill -KILL "$pid" $children 2>/dev/null || true
  done
  for pid in "${ops_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  ops_pids=()
  ops_names=()
}

# ops_check_running: fails naming the first spawned process that has exited.
ops_check_running() {
  local i
  for i in "${!ops_pids[@]}"; do
    if ! ops_alive "${ops_pids[$i]}"; then
      ops_log "${ops_names[$i]} (pid ${ops_pids[$i]}) has exited"
      return 1
    fi
  done
}

# --- the registry -----------------------------------------------------------

# ops_start_registry DIR PORT: the CNCF distribution registry on
# 127.0.0.1:PORT with its storage in DIR/storage, deletes enabled.
ops_start_registry() {
  local dir=$1 port=$2
  mkdir -p "$dir/storage"
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
EOF
  ops_spawn docker-registry "$dir/registry.log" docker-registry serve "$dir/config.yml"
  if ! ops_wait_until "the registry to answer GET /v2/ with 200 on 127.0.0.1:$port" 30 \
    ops_answers "http://127.0.0.1:$port/v2/" 200; then
    tail -n 20 "$dir/registry.log" >&2
    return 1
  fi
}

# --- nginx ------------------------------------------------------------------

# ops_substitute FILE FROM TO: copies stdin to stdout with the one line whose
# text (without surrounding blanks) is FROM replaced by TO, indentation kept;
# fails when FROM is not exactly one line, so a reshaped file fails loudly
# instead of serving the wrong address. The end-to-end tests substitute the
# same lines.
ops_substitute() {
  FROM=$2 TO=$3 FILE=$1 awk '
    BEGIN { from = ENVIRON["FROM"]; to = ENVIRON["TO"] }
    {
      text = $0
      sub(/^[ \t]+/, "", text)
      sub(/[ \t]+$/, "", text)
      if (text == from) {
        n++
        match($0, /^[ \t]*/)
        print substr($0, 1, RLENGTH) to
        next
      }
      print
    }
    END {
      if (n != 1) {
        printf "%s: expected exactly one line `%s` (a substitution point), found %d\n", ENVIRON["FILE"], from, n > "/dev/stderr"
        exit 1
      }
    }'
}

# ops_render_nginx OUT_DIR NGINX_USER UPSTREAM_FILE SERVER_FILE: writes
# OUT_DIR/conf/nginx.conf (http level: UPSTREAM_FILE then SERVER_FILE, both
# already substituted) with its own pid file, logs and temp paths.
ops_render_nginx() {
  local out=$1 user=$2 upstream=$3 server=$4
  mkdir -p "$out/conf" "$out/logs" "$out/temp"
  local user_line=""
  # `user` means something only to a master running as root.
  [ "$(id -u)" -ne 0 ] || user_line="user $user;"
  cat >"$out/conf/nginx.conf" <<EOF
# Generated by scripts/lib/ops.sh
$user_line
daemon off;
worker_processes 1;
pid $out/nginx.pid;
error_log $out/logs/error.log info;
events { worker_connections 256; }
http {
    client_body_temp_path $out/temp/body;
    proxy_temp_path $out/temp/proxy;
    fastcgi_temp_path $out/temp/fastcgi;
    uwsgi_temp_path $out/temp/uwsgi;
    scgi_temp_path $out/temp/scgi;
    include $upstream;
    include $server;
}
EOF
}

# ops_render_repo_nginx OUT_DIR NGINX_USER CSEL_AUTH_SERVER REGISTRY_ADDR
# LISTEN_ADDR: the repository's nginx/ files, substituted as the end-to-end
# tests do, into OUT_DIR/conf.
ops_render_repo_nginx() {
  local out=$1 user=$2 csel=$3 registry=$4 listen=$5 src="$ops_root/nginx"
  mkdir -p "$out/conf" "$out/logs"
  ops_substitute nginx/csel-auth-upstream.conf "server 127.0.0.1:9000;" "server $csel;" \
    <"$src/csel-auth-upstream.conf" >"$out/conf/csel-auth-upstream.conf" || return 1
  cp "$src/csel-auth.conf" "$out/conf/csel-auth.conf"
  {
    ops_substitute nginx/registry.conf "server 127.0.0.1:5001;" "server $registry;" |
      ops_substitute nginx/registry.conf "listen 127.0.0.1:5000;" "listen $listen;" |
      ops_substitute nginx/registry.conf "access_log /var/log/nginx/registry.access.log csel_auth;" \
        "access_log $out/logs/access.log csel_auth;"
  } <"$src/registry.conf" >"$out/conf/registry.conf" || return 1
  ops_render_nginx "$out" "$user" csel-auth-upstream.conf registry.conf
}

# ops_start_nginx OUT_DIR LISTEN_PORT: `nginx -t`, then nginx in the
# foreground; ready once it answers (the internal /_csel_auth is a 404 from
# nginx itself, without asking csel-auth).
ops_start_nginx() {
  local out=$1 port=$2
  if ! nginx -t -q -p "$out" -c "$out/conf/nginx.conf" -e "$out/logs/error.log"; then
    ops_log "nginx -t rejected $out/conf/nginx.conf"
    return 1
  fi
  ops_spawn nginx "$out/logs/stdout.log" nginx -p "$out" -c "$out/conf/nginx.conf" -e "$out/logs/error.log"
  if ! ops_wait_until "nginx to answer on 127.0.0.1:$port" 30 ops_answers "http://127.0.0.1:$port/_csel_auth" 404; then
    tail -n 20 "$out/logs/error.log" >&2
    return 1
  fi
}

# --- images -----------------------------------------------------------------

ops_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# ops_blob LAYOUT FILE: moves FILE into LAYOUT's blobs; prints "DIGEST SIZE".
ops_blob() {
  local layout=$1 file=$2 hex size
  hex=$(ops_sha256 "$file")
  size=$(stat -c %s "$file")
  mkdir -p "$layout/blobs/sha256"
  mv "$file" "$layout/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

# ops_oci_image LAYOUT TAG TEXT: an OCI image layout at LAYOUT holding one
# image tagged TAG whose only layer holds /hello.txt with TEXT. Built here,
# byte for byte: no daemon, no network.
ops_oci_image() {
  local layout=$1 tag=$2 text=$3 work arch layer config manifest
  work=$(mktemp -d)
  mkdir -p "$layout" "$work/rootfs"
  printf '%s\n' "$text" >"$work/rootfs/hello.txt"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer" hello.txt
  layer=$(ops_blob "$layout" "$work/layer")
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  printf '{"architecture":"%s","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$arch" "${layer% *}" >"$work/config"
  config=$(ops_blob "$layout" "$work/config")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
    "${config% *}" "${config#* }" "${layer% *}" "${layer#* }" >"$work/manifest"
  manifest=$(ops_blob "$layout" "$work/manifest")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "${manifest% *}" "${manifest#* }" "$tag" >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  rm -rf "$work"
}

# --- skopeo -----------------------------------------------------------------

# ops_skopeo_init DIR: a configuration of skopeo's own under DIR (signature
# policy, empty auth file, HOME and DOCKER_CONFIG), so no credentials of the
# machine's user take part and no system policy file is needed.
ops_skopeo_init() {
  ops_skopeo_dir=$1
  mkdir -p "$ops_skopeo_dir/home" "$ops_skopeo_dir/docker-config" "$ops_skopeo_dir/tmp"
  printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$ops_skopeo_dir/policy.json"
  printf '{"auths":{}}\n' >"$ops_skopeo_dir/auth.json"
}

# ops_skopeo ARGS...: skopeo with that configuration.
ops_skopeo() {
  HOME="$ops_skopeo_dir/home" DOCKER_CONFIG="$ops_skopeo_dir/docker-config" \
    XDG_CONFIG_HOME="$ops_skopeo_dir/home/.config" XDG_RUNTIME_DIR="$ops_skopeo_dir/home" \
    REGISTRY_AUTH_FILE="$ops_skopeo_dir/auth.json" \
    timeout 120 skopeo --policy "$ops_skopeo_dir/policy.json" --tmpdir "$ops_skopeo_dir/tmp" "$@"
}

# ops_push LAYOUT:TAG HOST/NAME:TAG [USER:PASSWORD]: skopeo copy of a local
# layout to the registry over plain HTTP; anonymous without credentials.
ops_push() {
  local creds=(--dest-no-creds)
  [ $# -lt 3 ] || creds=(--dest-creds "$3")
  ops_skopeo copy --quiet --dest-tls-verify=false "${creds[@]}" "oci:$1" "docker://$2"
}

# ops_pull HOST/NAME:TAG LAYOUT [USER:PASSWORD]: skopeo copy from the
# registry into a fresh layout; anonymous without credentials.
ops_pull() {
  local creds=(--src-no-creds)
  [ $# -lt 3 ] || creds=(--src-creds "$3")
  rm -rf "$2"
  ops_skopeo copy --quiet --src-tls-verify=false "${creds[@]}" "docker://$1" "oci:$2:pulled"
}

# ops_layer_text LAYOUT: the /hello.txt of the image pulled into LAYOUT.
ops_layer_text() {
  local layout=$1 manifest layer
  manifest=$(sed -E 's/.*"digest":"sha256:([0-9a-f]{64})".*/\1/' "$layout/index.json")
  layer=$(grep -oE '"layers":\[\{[^]]*' "$layout/blobs/sha256/$manifest" | grep -oE 'sha256:[0-9a-f]{64}' | head -n 1)
  tar -xOf "$layout/blobs/sha256/${layer#sha256:}" hello.txt
}
