"""What the official HRNet code and mmpretrain computed, from either of two independent sources.

* 'fixtures': the committed fixtures (tests/fixtures/official, tests/fixtures/mmpretrain; see their READMEs): always
  there, so every equivalence test runs in a plain clone.
* 'refdata': ../shared/refdata next to the project, made separately with other weights and sizes: an extra check
  that CI must run. Where it is absent (a contributor's clone), conftest deselects its tests; in CI it fails them.

Tests parametrize over `REFERENCE_SOURCES` and call `reference_run`, which writes the checkpoint file where needed
and returns one input with the outputs the reference code computed for it.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fixture_weights import load_fixture, subsample
from helpers import relative_diff

REFDATA = Path(__file__).resolve().parents[2] / 'shared' / 'refdata'
REFDATA_MISSING = f'reference fixtures not found at {REFDATA} (they live in ../shared next to the project)'

REFERENCE_SOURCES = ('fixtures', pytest.param('refdata', marks=pytest.mark.refdata))

# network -> (committed folder, name), (refdata folder, checkpoint, reference outputs, metadata)
_FIXTURES = {'cls': ('official', 'cls_hrnet_w18_small_v1'), 'pose': ('official', 'pose_hrnet_reduced'),
             'seg': ('official', 'seg_hrnet_reduced'), 'mmpretrain': ('mmpretrain', 'hrnet-w18_mmpretrain')}
_REFDATA = {
    'cls': ('official', 'hrnet_w18_small_official_random.pth', 'ref_hrnet_w18_small_official'),
    'pose': ('pose_official', 'pose_hrnet_small_official_random.pth', 'ref_pose_hrnet_small_official'),
    'seg': ('seg_official', 'seg_hrnet_small_official_random.pth', 'ref_seg_hrnet_small_official'),
    'mmpretrain': ('mmpretrain', 'hrnet-w18_mmpretrain_random.pth', 'ref_hrnet-w18_mmpretrain'),
}


def refdata_folder() -> Path:
    """../shared/refdata; skipped where absent (conftest deselects such tests first, and CI fails the skip)."""
    if not REFDATA.is_dir():
        pytest.skip(REFDATA_MISSING)
    return REFDATA


@dataclass(frozen=True)
class ReferenceRun:
    """A checkpoint file and one input with what the reference code computed for it.

    `outputs` has 'logits' (classifiers), 'output' (pose heatmaps, segmentation logits), 'branch_feats' (official:
    stage 4's outputs) or 'backbone_feats' and 'neck_feat' (mmpretrain). Maps keep every `step`-th value along H
    and W (branch maps every `branch_step`-th); 'output_sum' and 'output_abs_sum', where present, are the full map's.
    `meta` is the fixture's description: `extra` (the official MODEL.EXTRA), `align_corners`, ... .
    """

    source: str
    checkpoint: Path
    meta: dict[str, Any]
    input: torch.Tensor
    outputs: dict[str, Any]
    step: int = 1
    branch_step: int = 1

    def diff(self, name: str, ours: torch.Tensor) -> float:
        """Relative max difference of our full output `name` to the reference's (kept values and full sums)."""
        diffs = [relative_diff(subsample(ours, self.step) if ours.ndim == 4 else ours, self.outputs[name])]
        for kind, total in (('sum', ours.double().sum()), ('abs_sum', ours.double().abs().sum())):
            if f'{name}_{kind}' in self.outputs:
                expected = self.outputs[f'{name}_{kind}']
                diffs.append(abs(total.item() - expected) / max(abs(expected), 1e-12))
        return max(diffs)

    def branch_diffs(self, ours: list[torch.Tensor], name: str = 'branch_feats') -> list[float]:
        theirs = self.outputs[name]
        assert len(ours) == len(theirs), (len(ours), len(theirs))
        return [relative_diff(subsample(o, self.branch_step), t) for o, t in zip(ours, theirs, strict=True)]


def reference_run(source: str, network: str, folder: Path, case: str | None = None) -> ReferenceRun:
    """The reference run of `network` ('cls', 'pose', 'seg', 'mmpretrain') from `source`; the checkpoint of the
    committed fixtures is written into `folder`. `case` picks a committed input case (default: the first, the
    released input size); refdata has one input size, of which the first image is used."""
    if source == 'fixtures':
        fixture = load_fixture(*_FIXTURES[network])
        name = case or next(iter(fixture.cases))
        outputs = fixture.cases[name]
        return ReferenceRun(source, fixture.write_checkpoint(folder), fixture.manifest, fixture.input(name), outputs,
                            outputs.get('step', 1), outputs.get('branch_step', 1))
    if case is not None:
        raise ValueError(f'refdata has one input case, not {case!r}')
    subdir, checkpoint, reference = _REFDATA[network]
    root = refdata_folder() / subdir
    recorded = torch.load(root / f'{reference}.pt', weights_only=True)
    first = {k: [t[:1] for t in v] if isinstance(v, list) else v[:1] for k, v in recorded.items()}
    return ReferenceRun(source, root / checkpoint, json.loads((root / f'{reference}.json').read_text()),
                        first.pop('input'), first)


def copy_checkpoint(run: ReferenceRun, path: Path) -> Path:
    """The run's checkpoint under another name (the tests that need a file name of their own)."""
    shutil.copyfile(run.checkpoint, path)
    return path
