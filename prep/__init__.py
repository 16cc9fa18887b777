"""prep: ISBI 2014 EDF images → leakage-free, augmented tile dataset (the contract read by ``train``)."""

__version__ = "0.1.0"
