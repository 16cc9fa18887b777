"""train: FlexUNet on the prep tile dataset (reference-config compatible). Not implemented yet: issue #3."""
