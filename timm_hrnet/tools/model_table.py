"""`timm-hrnet models`: the variant table with parameter counts, GMACs, input sizes and published accuracies."""

from __future__ import annotations

import argparse
import fnmatch
from dataclasses import dataclass

import timm

from timm_hrnet.complexity import count_params_and_macs
from timm_hrnet.pretrained_cfgs import published_results
from timm_hrnet.tools.cli_common import CliError
from timm_hrnet.variants import VARIANTS

__all__ = ['ModelRow', 'add_arguments', 'count_params_and_macs', 'format_table', 'model_rows', 'run']


@dataclass(frozen=True)
class ModelRow:
    """One table line: a variant with one of its published weights (or none)."""

    name: str
    params_m: float
    gmacs: float
    input_size: str  # the training/default size, and the test size when the published accuracy used another
    top1: float | None
    top5: float | None


def model_rows(pattern: str = '*', pretrained_only: bool = False) -> list[ModelRow]:
    """A row per (variant, published weights) for variants matching the shell-style `pattern`; variants without
    weights get one row unless `pretrained_only`."""
    rows = []
    for architecture in fnmatch.filter(VARIANTS, pattern):
        default_size = timm.models.get_pretrained_cfg(architecture).input_size
        params, macs = count_params_and_macs(architecture, default_size)
        tagged_names = timm.list_pretrained(f'{architecture}.*')
        if not tagged_names and pretrained_only:
            continue
        for name in tagged_names or [architecture]:
            results = published_results(name) if name in tagged_names else None
            top1, top5 = results if results is not None else (None, None)
            cfg = timm.models.get_pretrained_cfg(name)
            input_size = str(cfg.input_size[-1])
            if cfg.test_input_size and cfg.test_input_size != cfg.input_size:
                input_size += f' (test {cfg.test_input_size[-1]})'
            rows.append(ModelRow(name, params / 1e6, macs / 1e9, input_size, top1, top5))
    return rows


def format_table(rows: list[ModelRow], markdown: bool = False) -> str:
    """Rows as a GitHub markdown table or as aligned plain text."""
    header = ['model', 'params (M)', 'GMACs', 'input', 'top-1', 'top-5']

    def accuracy(value: float | None) -> str:
        return f'{value:.2f}' if value is not None else '-'

    cells = [[row.name, f'{row.params_m:.2f}', f'{row.gmacs:.2f}', row.input_size,
              accuracy(row.top1), accuracy(row.top5)] for row in rows]
    if markdown:
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join([':---'] + ['---:'] * (len(header) - 1)) + '|']
        return '\n'.join(lines + ['| ' + ' | '.join(line) + ' |' for line in cells])
    widths = [max(len(column) for column in columns) for columns in zip(header, *cells, strict=True)]
    aligned = [
        [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        for line in [header, *cells]
    ]
    return '\n'.join('  '.join(line) for line in aligned)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `timm-hrnet models`."""
    parser.add_argument('pattern', nargs='?', default='*', help="shell-style variant filter, e.g. 'hrnet_w18*'")
    parser.add_argument('--pretrained', action='store_true', help='only variants with published weights')
    parser.add_argument('--markdown', action='store_true', help='print a markdown table')


def run(args: argparse.Namespace) -> int:
    """Print the variant table; a pattern that matches nothing is an error, not an empty table."""
    rows = model_rows(args.pattern, pretrained_only=args.pretrained)
    if not rows:
        matched = fnmatch.filter(VARIANTS, args.pattern)
        what = 'has published weights' if matched else 'matches'
        raise CliError(f"no variant {what} {args.pattern!r}; variants: {', '.join(VARIANTS)}")
    print(format_table(rows, markdown=args.markdown))
    return 0
