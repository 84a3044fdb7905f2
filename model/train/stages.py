"""The pipeline-stage layer split: which transformer blocks each pipeline stage holds.

    from orchestrate_bloom.train.stages import layers_per_stage, resolve_split, stage_of_layers
    layers_per_stage(70, 16)   # [5, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    stage_of_layers([2, 1])    # [0, 0, 1]: block i runs on stage stage_of_layers(...)[i]

The one rule for the split (plan, its memory estimate, the rendered job.yaml's
`parallel.layers_per_stage`, the trainer's stage assignment, the dry run and the tests all use
it): stages take consecutive blocks, the first `n_layer % stages` stages one more than the
rest, so no stage is empty and stages differ by at most one layer. Pure Python (no MindSpore,
no YAML): the control plane imports it.
"""

from __future__ import annotations

from collections.abc import Sequence


class SplitError(ValueError):
    """A layer split that cannot run; the message names the numbers."""


def layers_per_stage(n_layer: int, stages: int) -> list[int]:
    """Split `n_layer` blocks over `stages` pipeline stages: the first `n_layer % stages`
    stages take one more.

    >>> layers_per_stage(80, 12)
    [7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6]

    Raises:
        SplitError: fewer layers than stages (a stage would be empty), or a count below 1.
    """
    if n_layer < 1 or stages < 1:
        raise SplitError(f"n_layer={n_layer} and pipeline_stage={stages} must be >= 1")
    if stages > n_layer:
        raise SplitError(f"pipeline_stage={stages} exceeds n_layer={n_layer}: "
                         "a stage would hold no layer")
    base, extra = divmod(n_layer, stages)
    return [base + (1 if s < extra else 0) for s in range(stages)]


def check_split(split: Sequence[int], n_layer: int, stages: int) -> list[int]:
    """`split` if it is a valid split of `n_layer` blocks over `stages` stages.

    Raises:
        SplitError: wrong length, a stage with no layer, or a sum other than n_layer.
    """
    values = list(split)
    if len(values) != stages:
        raise SplitError(f"parallel.layers_per_stage={values} has {len(values)} entries, "
                         f"parallel.pipeline_stage={stages}")
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise SplitError(f"parallel.layers_per_stage={values}: every stage needs >= 1 layer")
    if sum(values) != n_layer:
        raise SplitError(f"parallel.layers_per_stage={values} sums to {sum(values)}, "
                         f"model.n_layer={n_layer}")
    return values


def resolve_split(given: Sequence[int], n_layer: int, stages: int) -> list[int]:
    """The split a job runs with: `given` (checked) or, when empty, layers_per_stage."""
    if given:
        return check_split(given, n_layer, stages)
    return layers_per_stage(n_layer, stages)


def stage_of_layers(split: Sequence[int]) -> list[int]:
    """Stage index of every block, in block order: [2, 1] -> [0, 0, 1]."""
    return [stage for stage, count in enumerate(split) for _ in range(count)]
