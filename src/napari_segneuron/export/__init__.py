"""Export label volumes for sharing: OME-Zarr (NGFF) and Neuroglancer precomputed."""
