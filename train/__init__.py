"""train: FlexUNet fitted on the prep tile dataset from a reference-compatible INI config, and evaluated."""
