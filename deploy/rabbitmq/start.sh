#!/usr/bin/env bash
# Makes sure a RabbitMQ answers on $RABBITMQ_HOST:$RABBITMQ_PORT (127.0.0.1:5672) for `make run`, `make test`
# and CI: does nothing when one already answers; otherwise installs Debian's `rabbitmq-server` package when it
# is missing (Debian or Ubuntu: apt-get, with sudo when not root; elsewhere it prints the one command that
# installs it), starts a node and waits until it accepts connections.
# Debian's rabbitmq-server must run as root (it switches to the rabbitmq user itself), hence sudo for other
# users when that system user exists.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
host=${RABBITMQ_HOST:-127.0.0.1}
port=${RABBITMQ_PORT:-5672}

answers() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

# Whether the broker answers the AMQP protocol header with a frame (connection.start) within 10 s.
# A node out of file handles still accepts TCP connections and then says nothing: every client (and
# every test) would wait for its own timeout.
speaks_amqp() {
  local first
  first=$(timeout 10 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "AMQP\000\000\011\001" >&3 && head -c 1 <&3 | od -An -tx1' \
    "$host" "$port" 2>/dev/null) || return 1
  [ "${first// /}" = "01" ]
}

if answers; then
  if speaks_amqp; then
    echo "rabbitmq: already answering on $host:$port"
    exit 0
  fi
  cat >&2 <<EOF
rabbitmq: $host:$port accepts connections but did not answer the AMQP handshake within 10 s.
A node out of file handles does this: each quorum queue keeps some open, and queues left behind by
earlier runs (other prefixes) add up against the node's limit (\`ulimit -n\`, often 1024).
  rabbitmqctl eval 'file_handle_cache:info([total_limit, total_used]).'   # the limit and its use
  rabbitmqctl list_queues name                                            # what holds them
Delete the queues nothing uses any more, or restart the node with a higher \`ulimit -n\`.
EOF
  exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi

if ! command -v rabbitmq-server >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "rabbitmq: nothing answers on $host:$port and rabbitmq-server is not installed. Install it with:" >&2
    if command -v brew >/dev/null; then
      echo "  brew install rabbitmq && brew services start rabbitmq" >&2
    elif command -v dnf >/dev/null; then
      echo "  sudo dnf install -y rabbitmq-server && sudo systemctl start rabbitmq-server" >&2
    else
      echo "  see https://www.rabbitmq.com/docs/download (or run one: docker run -d -p 5672:5672 rabbitmq:3)" >&2
    fi
    exit 1
  fi
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null; then
    echo "rabbitmq: installing needs root: apt-get install -y rabbitmq-server" >&2
    exit 1
  fi
  echo "rabbitmq: not installed; installing Debian's rabbitmq-server (${sudo:+$sudo }apt-get install -y rabbitmq-server)"
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends rabbitmq-server </dev/null
  # The package's service may have started a node already.
  for _ in $(seq 1 15); do
    if answers; then
      echo "rabbitmq: up on $host:$port"
      exit 0
    fi
    sleep 1
  done
fi

# A node started by root runs as the rabbitmq user; another user needs sudo for that.
if [ -z "$sudo" ] || ! id -u rabbitmq >/dev/null 2>&1; then
  sudo=""
fi
echo "rabbitmq: starting (${sudo:+$sudo }rabbitmq-server -detached)"
$sudo rabbitmq-server -detached || echo "rabbitmq: -detached failed; waiting in case a node is already booting" >&2
for _ in $(seq 1 60); do
  if $sudo rabbitmqctl -q await_startup >/dev/null 2>&1; then break; fi
  sleep 2
done
for _ in $(seq 1 30); do
  if answers; then
    echo "rabbitmq: up on $host:$port"
    exit 0
  fi
  sleep 1
done
echo "rabbitmq: started, but nothing answers on $host:$port; see /var/log/rabbitmq/" >&2
exit 1
