"""The training log: JSON lines (one record per logging interval, evaluation and event) and TensorBoard scalars
when `tensorboard` is installed. Only rank 0 writes."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

__all__ = ['RunLog', 'json_safe']

_logger = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """Plain JSON: NaN and infinities as null (strict JSON has no NaN), tuples as lists, tensors as numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, 'item') and getattr(value, 'ndim', 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _drop_cut_line(path: Path) -> None:
    """Truncate `path` after its last newline: what follows is a record whose append was interrupted."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b'\n'):
        with open(path, 'r+b') as file:
            file.truncate(data.rfind(b'\n') + 1)
        _logger.warning('%s: dropped a record cut short by an interrupted run', path)


class RunLog:
    """Appends records to `<output_dir>/log.jsonl` (a resumed run continues the file) and mirrors their numbers to
    TensorBoard (`<output_dir>/tensorboard`) when it can be imported, or not at all with `tensorboard=False`. A line
    cut short by a run killed mid-append is dropped when the log is opened again, so the file stays JSON lines."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool | None = None) -> None:
        self.path = output_dir / 'log.jsonl'
        self.enabled = enabled
        self.writer = None
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)
            _drop_cut_line(self.path)
        if enabled and tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                if tensorboard:
                    raise ImportError(f'tensorboard=True (--tensorboard) needs the tensorboard package, which does not '
                                      f'import ({error}): pip install tensorboard') from error
                _logger.debug('tensorboard is not installed: logging JSON lines only')
            else:
                self.writer = SummaryWriter(str(output_dir / 'tensorboard'))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = json_safe(record)
        with open(self.path, 'a') as file:
            file.write(json.dumps(record) + '\n')
        if self.writer is not None and isinstance(record.get('step'), int):
            prefix = record.get('event', 'train')
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ('step', 'epoch'):
                    self.writer.add_scalar(f'{prefix}/{key}', value, record['step'])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
