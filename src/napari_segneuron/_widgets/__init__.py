"""napari dock widgets (thin Qt glue over the Qt-free core)."""
