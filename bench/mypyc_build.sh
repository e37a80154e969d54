#!/bin/sh
# Build a compiled copy of the committed tree, to measure it beside the pure one:
#   sh bench/mypyc_build.sh /tmp/rr-mypyc
#   BENCH_COMPILED_ROOT=/tmp/rr-mypyc python bench/run.py --targets defaults,defaults-mypyc,bare,bare-mypyc,nginx
#   (cd /tmp/rr-mypyc && PYTHONPATH=$PWD python bench/hotpath.py --all)
# It compiles with setup.py's own module list (REGION_ROUTER_COMPILE=1: fail, never fall
# back). A copy, so this checkout never holds a compiled module that shadows its sources.
set -eu
dest=${1:?usage: sh bench/mypyc_build.sh DEST_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$dest"
mkdir -p "$dest"
git -C "$repo" archive HEAD | tar -x -C "$dest"
cd "$dest"
REGION_ROUTER_COMPILE=1 python setup.py -q build_ext --inplace
echo "compiled tree in $dest"
