"""The one verification report, for every kind of repo: what was compared with what, the differences, the verdict.

Classifier repos are held to an absolute tolerance on logits (``atol``), pose and segmentation repos to one on the
relative max difference (``rtol``, their outputs' scale varies by model); exactly one of the two is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ['VerifyReport']


@dataclass(frozen=True)
class VerifyReport:
    repo_dir: Path
    architecture: str
    against: str  # what the repo was compared with: the source checkpoint, or its own weights
    reference: str  # the code that computed the reference outputs
    independent: bool  # False: the reference came from the converter that wrote the repo (self-consistency only)
    max_abs_diff: float
    atol: float | None = None  # classifier repos
    rtol: float | None = None  # pose / segmentation repos, on relative_diff
    relative_diff: float = math.nan  # max |repo - reference| / max |reference|
    problems: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.atol is None) == (self.rtol is None):
            raise ValueError('a VerifyReport holds exactly one tolerance: atol (classifiers) or rtol (task models)')

    @property
    def ok(self) -> bool:
        if self.atol is not None:
            return not self.problems and self.max_abs_diff <= self.atol
        return not self.problems and self.relative_diff <= self.rtol

    def difference(self) -> str:
        """The measured difference the verdict rests on, e.g. 'max abs diff 0' or 'relative max diff 0'."""
        if self.atol is not None:
            return f'max abs diff {self.max_abs_diff:.2g}'
        return f'relative max diff {self.relative_diff:.2g}'

    def brief(self) -> str:
        """The difference and the scope, for batch summaries."""
        return self.difference() + ('' if self.independent else ' (self-consistency only)')

    def summary(self) -> str:
        """One line: verdict, what was compared through what, the difference and any problems."""
        verdict = 'OK' if self.ok else 'FAILED'
        scope = '' if self.independent else ' (self-consistency only)'
        if self.atol is not None:
            measured = f'max abs diff {self.max_abs_diff:.3g} (tolerance {self.atol:g})'
        else:
            measured = (f'relative max diff {self.relative_diff:.3g} (tolerance {self.rtol:g}), '
                        f'max abs diff {self.max_abs_diff:.3g}')
        line = (f'verify {verdict}{scope}: {self.repo_dir} ({self.architecture}) vs {self.against} through '
                f'{self.reference}: {measured}')
        return '; '.join([line, *self.problems])
