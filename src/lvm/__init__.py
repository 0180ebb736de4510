"""lvm-context: latent vector models over long contexts of concept vectors."""

__version__ = "0.1.0"


class LvmError(Exception):
    """A user-facing error: bad params, bad input file. Stages print it and exit non-zero."""
