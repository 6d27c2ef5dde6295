"""The package version, in a module of its own: importing it loads nothing else."""

__version__ = "0.7.7"

# The release whose marking, training and audits a result was computed by. Cell, clean
# model and release identities hash this, not ``__version__``: a release that changes
# none of them (a new countermeasure, a report, a CLI flag) keeps every stored result;
# one that changes what any cell's rows would be sets it to its own version. A change that
# touches one method's cells only is named by that method's ``audit_revision`` instead
# (0.7.0: UBW-C calibrated), and one that touches one countermeasure's by its
# ``revision`` (0.7.7: fine-tuning on held-out data), so every other stored cell keeps
# its identity.
COMPUTE_VERSION = "0.3.0"
