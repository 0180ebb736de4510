"""lvm-context: latent vector models over long contexts of concept vectors."""
import os

# OpenMP threads that wait at a barrier spin on their core by default. When another process wants
# that core (a DVC queue worker, any other job), the spinning and the preempted threads stall each
# other: measured on 2 cores with two other busy processes, one gru training step took 37.9 s with
# the default policy, 5.0 s with PASSIVE (1.08 s on a quiet machine). Read once, when torch loads
# libgomp, so it is set here, before any torch import; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


class LvmError(Exception):
    """A user-facing error: bad params, bad input file. Stages print it and exit non-zero."""
