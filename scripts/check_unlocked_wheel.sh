#!/usr/bin/env bash
# CI: the wheel built from this checkout installs with [all] into a fresh venv WITHOUT the lock,
# then `napari-segneuron --help`, `predict` and `segment` run on a crop of the bundled sample from
# outside the source tree (a file missing from the wheel shows up here).
#   scripts/check_unlocked_wheel.sh [LOCKED_PYTHON]
# LOCKED_PYTHON (default .venv/bin/python) builds the wheel and names the lock's versions when the
# unlocked install fails or resolves differently. Exit 0 when everything ran; else 1 with ONE line.
set -uo pipefail
cd "$(dirname "$0")/.."
src="$(pwd)"
locked_py="${1:-.venv/bin/python}"
lock="requirements/lock-linux-x86_64-py3.11.txt"
t="$(mktemp -d)"; trap 'rm -rf "$t"' EXIT
s0=$(date +%s)

"$locked_py" -m pip wheel --quiet --no-deps --no-build-isolation -w "$t/dist" . >"$t/build.log" 2>&1 || {
  tail -5 "$t/build.log" >&2; echo "check_unlocked_wheel: the wheel did not build (see above)"; exit 1; }
wheel="$(ls "$t"/dist/napari_segneuron-*.whl)"

python3 -m venv "$t/v"
# torch first, as on any machine (the platform's build); everything else resolves unlocked
"$t/v/bin/pip" install --quiet "torch==2.13.0" >"$t/torch.log" 2>&1 || {
  tail -3 "$t/torch.log" >&2; echo "check_unlocked_wheel: torch==2.13.0 did not install"; exit 1; }

# resolve first (no install): the report names every version the resolver picked
resolved=1
"$t/v/bin/pip" install --dry-run --quiet --report "$t/report.json" "${wheel}[all]" >"$t/resolve.log" 2>&1 || resolved=0
# locked packages that resolve to another version without the lock: "name lock -> now"
m="$("$locked_py" - "$lock" "$t/report.json" <<'PYEOF'
import json, re, sys
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\]+)", open(sys.argv[1]).read(), re.M))
locked = {canon(k): v for k, v in locked.items()}
try:
    items = json.load(open(sys.argv[2]))["install"]
except (OSError, ValueError, KeyError):
    sys.exit(0)
now = {canon(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
print(", ".join(f"{k} {locked[k]} -> {v}" for k, v in sorted(now.items())
                if k in locked and v != locked[k] and "+" not in locked[k]))
PYEOF
)"
if [ "$resolved" = 0 ] || ! "$t/v/bin/pip" install "${wheel}[all]" >"$t/install.log" 2>&1; then
  cat "$t/resolve.log" "$t/install.log" 2>/dev/null | grep -v '^WARNING: Location' | tail -8 >&2
  err="$(cat "$t/resolve.log" "$t/install.log" 2>/dev/null | grep -E '^ERROR' | tail -1)"
  if [ -z "$m" ]; then  # no resolution: wheels only makes pip name the conflict instead of backtracking
    "$t/v/bin/pip" install --dry-run --only-binary=:all: "${wheel}[all]" >"$t/binary.log" 2>&1
    m="$(grep -E ' depends on |requested ' "$t/binary.log" | grep -v '^WARNING' | sed 's/^ *//' | head -3 | tr '\n' ';' | sed 's/;$//')"
  fi
  echo "check_unlocked_wheel: the locked install works, but pip install napari-segneuron[all] without the lock failed (${err:-see above})${m:+; moved from the lock: $m}"
  exit 1
fi
# an sdist in the unlocked resolution means the resolver backtracked or a wheel went missing
sdists="$(grep -oE 'Downloading [^ ]+\.(tar\.gz|zip)' "$t/install.log" | sed 's/Downloading //' | tr '\n' ' ')"
install_s=$(( $(date +%s) - s0 ))

run() {  # name, command...: run from outside the tree, one line on failure
  local name="$1"; shift
  (cd "$t/work" && "$@") >"$t/$name.log" 2>&1 || {
    tail -5 "$t/$name.log" >&2
    echo "check_unlocked_wheel: the locked install works, but '$name' from the unlocked wheel failed${m:+ (moved from the lock: $m)}"
    exit 1; }
}
mkdir -p "$t/work"
run help "$t/v/bin/napari-segneuron" --help
run crop "$t/v/bin/python" -c "
import importlib.resources as r, tifffile
raw = tifffile.imread(r.files('napari_segneuron') / 'data' / 'fib25_a_raw.tif')
tifffile.imwrite('crop.tif', raw[:24, :96, :96])"
run predict "$t/v/bin/napari-segneuron" predict crop.tif -o pred.zarr --weights default --tta off --magnify 1
run segment "$t/v/bin/napari-segneuron" segment pred.zarr -o labels.tif
n="$(cd "$t/work" && "$t/v/bin/python" -c "import numpy as np, tifffile; print(len(np.unique(tifffile.imread('labels.tif'))) - 1)")"
[ "$n" -gt 1 ] 2>/dev/null || { echo "check_unlocked_wheel: segment from the unlocked wheel gave $n segments"; exit 1; }
echo "check_unlocked_wheel: ok in $(( $(date +%s) - s0 )) s (install ${install_s} s): --help, predict, segment ($n segments) from outside the tree${m:+; newer than the lock: $m}${sdists:+; built from sdists: $sdists}"
