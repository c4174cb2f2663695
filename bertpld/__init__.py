"""bertpld: BERT pre-training with Progressive Layer Dropping, and the measurements to prove it."""

__version__ = "0.1.0"
