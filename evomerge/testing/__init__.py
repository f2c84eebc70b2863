"""Conformance kits for plugin authors, as ``optuna.testing`` is for samplers: what the search
loop relies on from an optimizer or a merge method, checked the way evomerge checks its own.

Each ``check_*`` function raises ``AssertionError`` naming what broke. Under pytest, subclass a
suite and set its attributes; every check becomes a test::

    from evomerge.testing import MergeMethodSuite, OptimizerSuite

    class TestCorner(OptimizerSuite):
        optimizer = "corner"              # a registered name, or the class itself
        options = {"batch": 4}

    class TestHalfway(MergeMethodSuite):
        method = "halfway"
        mergekit = False                  # True: compare tensors with mergekit's own
"""

from evomerge.testing.methods import (
    MergeMethodSuite,
    check_determinism_of_merges,
    check_identity,
    check_memory_equals_disk,
    check_mergekit_equality,
    check_parameters,
    tiny_family,
)
from evomerge.testing.optimizers import (
    OptimizerSuite,
    check_bounds,
    check_determinism,
    check_failures,
    check_global_rng,
    check_resume,
    check_tiny_gene_sets,
)

__all__ = [
    "MergeMethodSuite",
    "OptimizerSuite",
    "check_bounds",
    "check_determinism",
    "check_determinism_of_merges",
    "check_failures",
    "check_global_rng",
    "check_identity",
    "check_memory_equals_disk",
    "check_mergekit_equality",
    "check_parameters",
    "check_resume",
    "check_tiny_gene_sets",
    "tiny_family",
]
