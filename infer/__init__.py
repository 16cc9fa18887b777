"""infer: full-size prediction by Gaussian-weighted tile stitching. Not implemented yet: issue #4."""
