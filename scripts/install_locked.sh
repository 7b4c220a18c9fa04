#!/usr/bin/env bash
# Install the project into a virtual environment from the committed lock.
#   scripts/install_locked.sh PYTHON LOCK [TORCH_SPEC]
# Every package comes from LOCK with its pinned version and hash (--require-hashes, --no-deps:
# the lock is complete, nothing else is resolved). TORCH_SPEC "locked" (the default) takes the
# lock's CPU torch; anything else (e.g. "torch" for a CUDA build) replaces the lock's torch entry
# and lets pip resolve that one package. The project itself is installed editable, without deps.
set -euo pipefail
py="$1"; lock="$2"; torch_spec="${3:-locked}"
tmp="$(mktemp)"; trap 'rm -f "$tmp"' EXIT
if [ "$torch_spec" = locked ]; then
  cp "$lock" "$tmp"
else
  # drop the torch entry (its line and the indented hash/comment lines under it)
  awk '/^torch==/{skip=1; next} skip && /^[[:space:]]/{next} {skip=0; print}' "$lock" >"$tmp"
fi
"$py" -m pip install --quiet --no-deps --require-hashes -r "$tmp"
if [ "$torch_spec" != locked ]; then
  "$py" -m pip install --quiet "$torch_spec"
fi
"$py" -m pip install --quiet --no-deps --no-build-isolation -e .
"$py" -m pip check
