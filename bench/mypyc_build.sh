#!/bin/sh
# Build a copy of this checkout with the proxy path compiled by mypyc, for measurement:
#   sh bench/mypyc_build.sh /tmp/rr-mypyc
#   BENCH_COMPILED_ROOT=/tmp/rr-mypyc python bench/run.py --targets defaults,defaults-mypyc,bare,bare-mypyc,nginx
#   (cd /tmp/rr-mypyc && PYTHONPATH=$PWD python bench/hotpath.py --all)
# The copy is the committed tree (git archive HEAD): the worktree itself never holds a
# compiled module, so editing a .py here always takes effect. Needs mypy and a C compiler.
set -eu
dest=${1:?usage: sh bench/mypyc_build.sh DEST_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$dest"
mkdir -p "$dest"
git -C "$repo" archive HEAD | tar -x -C "$dest"
cd "$dest"
python -m mypyc \
  router/proxy/accesslog.py router/proxy/client.py router/proxy/core.py \
  router/proxy/exchange.py router/proxy/headers.py router/proxy/paths.py \
  router/proxy/retries.py router/proxy/upstream.py \
  router/routing/load.py router/routing/routes.py router/routing/strategies.py
echo "compiled tree in $dest"
