"""``python -m napari_segneuron.cli``: the same as the ``napari-segneuron`` command."""
import sys

from . import main

sys.exit(main())
