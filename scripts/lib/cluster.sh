# Shared by the scripts that start a throwaway PostgreSQL and Querycop on
# loopback: source it after setting `work` (a temporary directory).

# pgbin NAME: the newest installed PostgreSQL's server-side program, so
# pgbench and psql match the server.
pgbin() {
	local p
	p=$(ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1)
	[ -n "$p" ] && { echo "$p"; return; }
	command -v "$1"
}

# initdb, postgres and pgbouncer refuse to run as root.
as_pg() {
	if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

_taken=" "
# pick_port PREFERRED: that port if free, else a random free one; never the
# same twice in one script.
pick_port() {
	local p=$1
	while ! port_free "$p" || [[ $_taken == *" $p "* ]]; do p=$((20000 + RANDOM % 20000)); done
	_taken+="$p "
	echo "$p"
}

# wait_port PORT PID NAME: until something listens on PORT, or PID dies.
wait_port() {
	local i
	for i in $(seq 200); do
		port_free "$1" || return 0
		kill -0 "$2" 2>/dev/null || { echo "$3 exited during start-up" >&2; return 1; }
		sleep 0.05
	done
	echo "$3 did not listen on port $1 within 10 s" >&2
	return 1
}

# stop_pid PID: TERM, then KILL after 10 s.
stop_pid() {
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill "$pid" 2>/dev/null || return 0
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# start_cluster PORT [postgresql.conf lines...]: a cluster in $work/data,
# fsync off, SCRAM for TCP clients, superuser postgres over the socket.
start_cluster() {
	local port=$1 line
	shift
	mkdir -p "$work/data"
	[ "$(id -u)" -eq 0 ] && chown postgres "$work" "$work/data"
	as_pg "$(pgbin initdb)" -D "$work/data" -A trust -U postgres --no-sync -E UTF8 --locale=C >/dev/null
	{
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $port"
		echo "unix_socket_directories = '$work'"
		echo "fsync = off"
		echo "synchronous_commit = off"
		echo "password_encryption = 'scram-sha-256'"
		for line in "$@"; do echo "$line"; done
	} >>"$work/data/postgresql.conf"
	printf 'local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n' >"$work/data/pg_hba.conf"
	as_pg "$(pgbin pg_ctl)" -D "$work/data" -l "$work/postgres.log" -w -t 60 start >/dev/null
	cluster_port=$port
}

stop_cluster() {
	[ -f "$work/data/postmaster.pid" ] && as_pg "$(pgbin pg_ctl)" -D "$work/data" stop -m immediate >/dev/null 2>&1
	return 0
}

# psql_admin ARGS...: psql as the superuser over the cluster's socket.
psql_admin() { "$(pgbin psql)" -X -q -At -v ON_ERROR_STOP=1 -h "$work" -p "$cluster_port" -U postgres -d postgres "$@"; }
