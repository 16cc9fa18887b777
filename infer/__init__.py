"""infer: full-size prediction (one whole pass or Gaussian-weighted stitched tiles) into masks, instance labels,
tables, GeoJSON and overlays."""
