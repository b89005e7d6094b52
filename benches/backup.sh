#!/usr/bin/env bash
# Backup benchmark: runbook's archiver against `tar -czf` (gzip -6) and `tar -I pigz` on
# the same generated Laravel-like tree, in the same run; then restore against `tar -xzf`.
# Prints seconds (median of $RUNS), sizes and the ratios.  SCALE=1 ≈ 20k files, 250 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SCALE=${SCALE:-1}
command -v pigz >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pigz; }
cargo build --release --locked -q
RB=$PWD/target/release/runbook
W=$(mktemp -d /tmp/rb-backup-bench.XXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/deploy/releases" "$W/deploy/shared" "$W/out" "$W/scripts"
python3 benches/mktree.py "$W/deploy/releases/20250110T120000Z" "$SCALE"
ln -s releases/20250110T120000Z "$W/deploy/current"
TREE=$W/deploy/releases/20250110T120000Z
printf '[app]\nname = "bench"\ndeploy_path = "deploy"\n[env.b]\ntransport = "local"\nbackup_dir = "backups"\nhosts = { a = "localhost" }\n' > "$W/runbook.toml"
echo 'print(backup::create(host("a"), #{}).name);' > "$W/scripts/create.rhai"
files=$(find "$TREE" -type f | wc -l); bytes=$(du -sb "$TREE" | cut -f1)

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timed() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); awk -v d=$((e - s)) 'BEGIN {printf "%.2f", d / 1e9}'; }

cd "$W"
t_rb=(); t_tar=(); t_pigz=(); t_rbx=(); t_tarx=()
for ((i = 0; i < RUNS; i++)); do
  rm -rf backups out/*; sync
  t_rb+=("$(timed "$RB" run create -e b -q)")
  t_tar+=("$(timed tar -czf out/tar.tar.gz -C deploy/releases 20250110T120000Z)")
  t_pigz+=("$(timed tar -I pigz -cf out/pigz.tar.gz -C deploy/releases 20250110T120000Z)")
  name=$(ls backups/*.tar.gz | head -1)
  echo "backup::restore(host(\"a\"), \"$(basename "$name")\", #{});" > scripts/restore.rhai
  t_rbx+=("$(timed "$RB" run restore -e b -q)")
  mkdir -p out/x && rm -rf out/x/*
  t_tarx+=("$(timed tar -xzf out/tar.tar.gz -C out/x)")
  # keep only the original release for the next round
  find deploy/releases -mindepth 1 -maxdepth 1 ! -name 20250110T120000Z -exec rm -rf {} +
  ln -sfn releases/20250110T120000Z deploy/current
done
rb=$(median "${t_rb[@]}"); tr=$(median "${t_tar[@]}"); pz=$(median "${t_pigz[@]}")
rbx=$(median "${t_rbx[@]}"); trx=$(median "${t_tarx[@]}")
s_rb=$(stat -c %s backups/*.tar.gz | head -1); s_tar=$(stat -c %s out/tar.tar.gz); s_pigz=$(stat -c %s out/pigz.tar.gz)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "## backup of a generated release tree: $files files, $((bytes / 1048576)) MiB (SCALE=$SCALE), median of $RUNS, $(nproc) cores"
echo
echo "| | seconds | archive MiB |"
echo "|---|---:|---:|"
echo "| runbook backup::create (incl. read-back verify) | $rb | $((s_rb / 1048576)) |"
echo "| tar -czf (gzip -6) | $tr | $((s_tar / 1048576)) |"
echo "| tar -I pigz | $pz | $((s_pigz / 1048576)) |"
echo "| runbook backup::restore (verify + extract + switch) | $rbx | |"
echo "| tar -xzf | $trx | |"
echo
echo "- size vs gzip -6: $(ratio "$s_rb" "$s_tar") (target within 2%)"
echo "- create time vs tar -czf: $(ratio "$rb" "$tr") (target <= 0.5); vs pigz: $(ratio "$rb" "$pz") (target <= 1.0)"
echo "- restore time vs tar -xzf: $(ratio "$rbx" "$trx") (target <= 1.1)"
