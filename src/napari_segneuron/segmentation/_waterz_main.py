"""Entry point of the waterz worker process: ``python -m napari_segneuron.segmentation._waterz_main SPEC.json``.

A module of its own, so the worker never imports the caller's ``__main__`` (see ``worker``)."""
from __future__ import annotations

import json
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m napari_segneuron.segmentation._waterz_main SPEC.json", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        spec = json.load(f)
    from .worker import _worker_main

    _worker_main(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
