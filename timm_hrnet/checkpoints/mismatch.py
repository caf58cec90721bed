"""The one key-difference report: what a checkpoint lacks, has extra, or has in another shape than a model."""
from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ['CheckpointMismatchError', 'key_differences']


def key_differences(
        state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size | tuple[int, ...]],
) -> tuple[list[str], list[str], dict[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
    """(missing, unexpected, mismatched shapes) of `state_dict` against the expected keys and shapes."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = {
        k: (tuple(v.shape), tuple(expected[k])) for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k])
    }
    return missing, unexpected, mismatched


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the target model; every offending key is listed by name."""

    def __init__(
            self,
            model_name: str,
            source: str,
            missing: list[str],
            unexpected: list[str],
            mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
            hint: str = '(pass allow_partial=True to keep only the matching tensors)',
    ) -> None:
        self.model_name = model_name
        self.source = source
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f'{source} does not fit {model_name}:']
        if missing:
            lines.append(f'  missing keys ({len(missing)}): ' + ', '.join(missing))
        if unexpected:
            lines.append(f'  unexpected (unmapped) keys ({len(unexpected)}): ' + ', '.join(unexpected))
        for key, (got, want) in mismatched.items():
            lines.append(f'  shape mismatch for {key}: checkpoint {list(got)} vs model {list(want)}')
        lines.append(f'  {hint}')
        super().__init__('\n'.join(lines))
