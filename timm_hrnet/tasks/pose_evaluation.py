"""COCO keypoint AP of a top-down pose model, by the protocol the published HRNet numbers were measured with
(deep-high-resolution-net.pytorch's COCO evaluation; mmpose's CocoMetric computes the same):

1. person boxes from a detector's COCO results file (person category, score >= `box_score_thr`), or the
   ground-truth boxes (non-crowd persons with keypoints, area > 0, box clipped to the image as the official code
   does; score 1);
2. each box cropped and run as `HRNetPose.predict` does, with the same functions (aspect fix, x1.25 padding, the
   model codec's crop, flip test and decoding), crops of several images batched together;
3. rescoring: instance score = box score x mean of the keypoint scores above 0.2 (0 if none);
4. OKS-NMS per image at OKS 0.9, the OKS area being that of the padded crop box (both references use it);
5. pycocotools' COCOeval on the results, which are also what the COCO server takes.

The keypoint set (OKS sigmas, flip pairs) is the one given, else the model's own, else the annotation file's keypoint
category (`evaluation_keypoints`).

COCO-WholeBody annotation files (the body's 17 keypoints plus foot_kpts, face_kpts, lefthand_kpts, righthand_kpts)
are read as 133 keypoints, and a whole-body model is scored as mmpose's CocoWholeBodyMetric scores it with
xtcocotools' COCOeval (iouType keypoints_body / _foot / _face / _lefthand / _righthand / _wholebody, use_area): per
part, the OKS over that part's keypoints with its sigmas, a person ignored when none of the part's keypoints is
labelled, a result left out when none of its part's scores is positive, result areas from the body keypoints
(`wholebody_keypoint_stats`, on pycocotools' COCOeval, which computes the same OKS and matching).

pycocotools is optional (`pip install "timm-hrnet[eval]"`) and imported only here, when evaluating.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..images import UnreadableImageError, image_to_tensor
from ..outputs import write_json
from .datasets import (
    COCO_KEYPOINT_SIGMAS,
    COCO_WHOLEBODY_KEYPOINTS,
    KEYPOINT_SETS,
    WHOLEBODY_PARTS,
    KeypointInfo,
    keypoints_from_category,
    read_keypoint_file,
)
from .eval_common import (
    broadcast_from_main,
    gather_or_raise,
    max_over_ranks,
    rank_and_world_size,
    read_ahead,
)
from .pose import box_to_center_size, crop_boxes, flip_test_heatmaps
from .pose_codecs import decode_heatmaps, parse_codec

__all__ = [
    'COCO_KEYPOINT_SIGMAS', 'PoseDataError', 'evaluate_pose', 'keypoint_oks', 'oks_nms', 'rescore',
    'coco_keypoint_stats', 'load_keypoint_annotations', 'detection_boxes', 'ground_truth_boxes', 'STAT_NAMES',
    'evaluation_keypoints', 'wholebody_keypoint_stats',
]
# COCOeval(iouType='keypoints').stats, in order
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'AR50', 'AR75', 'ARm', 'ARl')


class PoseDataError(ValueError):
    """An annotation, detection or image file that cannot be evaluated; the message names the file."""


def _pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError('COCO keypoint evaluation needs pycocotools: pip install "timm-hrnet[eval]" '
                          '(or pip install pycocotools)') from error
    return COCO, COCOeval


def _read_json(path: str | PathLike, what: str) -> Any:
    try:
        with open(path) as file:
            return json.load(file)
    except FileNotFoundError as error:
        raise PoseDataError(f'{what} not found: {path}') from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PoseDataError(f'cannot read {what} {path}: {error}') from error


def load_keypoint_annotations(ann_file: str | PathLike) -> tuple[Any, dict[str, Any]]:
    """A pycocotools `COCO` of a keypoint annotation file and its keypoint category, checked: a detection-only or
    malformed file is refused naming the file."""
    COCO, _ = _pycocotools()
    data = _read_json(ann_file, 'annotation file')
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ('images', 'annotations')):
        raise PoseDataError(f'{ann_file} is not a COCO annotation file (needs "images" and "annotations" lists)')
    categories = [c for c in data.get('categories') or [] if isinstance(c, dict) and c.get('keypoints')]
    if len(categories) > 1:
        categories = [c for c in categories if c.get('name') == 'person'] or categories
    if len(categories) != 1:
        found = 'no category lists keypoints' if not categories else f'{len(categories)} keypoint categories'
        raise PoseDataError(f'{ann_file} has no single keypoint category ({found}): a COCO person_keypoints '
                            'annotation file is needed')
    category = categories[0]
    annotations = [a for a in data['annotations'] if isinstance(a, dict) and a.get('category_id') == category['id']]
    parts = [field for _, _, field in WHOLEBODY_PARTS.values()]
    if len(category['keypoints']) == 17 and annotations and all(all(f in a for f in parts) for a in annotations):
        # COCO-WholeBody: the body's keypoints and each part's, read as one 133-keypoint set
        category = dict(category, keypoints=list(COCO_WHOLEBODY_KEYPOINTS.keypoint_names))
        for ann in annotations:
            ann['keypoints'] = [v for field in parts for v in ann[field]]
            ann['num_keypoints'] = sum(1 for v in ann['keypoints'][2::3] if v > 0)
    if not any('keypoints' in a for a in annotations):
        raise PoseDataError(f'{ann_file} has no keypoint annotations for category {category["name"]!r}: '
                            'a COCO person_keypoints annotation file is needed')
    for ann in annotations:
        if not all(key in ann for key in ('keypoints', 'area', 'bbox', 'image_id')):
            raise PoseDataError(f'{ann_file}: annotation {ann.get("id")} lacks keypoints, area, bbox or image_id')
        # COCOeval needs these two; absent, they mean what COCO's files state explicitly
        ann.setdefault('iscrowd', 0)
        ann.setdefault('num_keypoints', sum(1 for v in ann['keypoints'][2::3] if v > 0))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, category


def detection_boxes(det_file: str | PathLike, coco: Any, category_id: int,
                    score_thr: float = 0.0) -> dict[int, list[list[float]]]:
    """Person boxes (x, y, w, h, score) per image id from a COCO detection results file, scoring at least
    `score_thr` (the official code and mmpose keep `score >= thr`)."""
    detections = _read_json(det_file, 'detection file')
    if not isinstance(detections, list):
        raise PoseDataError(f'{det_file} is not a COCO detection results file (a list of '
                            '{image_id, category_id, bbox, score})')
    boxes: dict[int, list[list[float]]] = defaultdict(list)
    unknown: set[Any] = set()  # repr of the ids, which need not be hashable
    for index, det in enumerate(detections):
        try:
            image_id, category, bbox, score = det['image_id'], det['category_id'], det['bbox'], float(det['score'])
            bbox = [float(v) for v in bbox]
        except (KeyError, TypeError, ValueError) as error:
            raise PoseDataError(f'{det_file}: entry {index} is not {{image_id, category_id, bbox [x, y, w, h], '
                                f'score}}: {str(det)[:120]}') from error
        if len(bbox) != 4:
            raise PoseDataError(f'{det_file}: entry {index} has a bbox of {len(bbox)} values, not [x, y, w, h]')
        if not isinstance(image_id, (int, str)) or image_id not in coco.imgs:
            unknown.add(repr(image_id))
        elif category == category_id and score >= score_thr:
            boxes[image_id].append([*bbox, score])
    if unknown:
        example = sorted(unknown)[0]
        raise PoseDataError(f'{det_file} has detections for {len(unknown)} image ids that are not in the annotation '
                            f'file (e.g. {example}): detections of another split?')
    return dict(boxes)


def ground_truth_boxes(coco: Any, category_id: int, ann_file: str | PathLike = '') -> dict[int, list[list[float]]]:
    """The annotated person boxes the official code evaluates with (TEST.USE_GT_BBOX): non-crowd annotations with a
    labelled keypoint and area > 0, the box clipped to the image as x1 = max(0, x), x2 = min(W - 1, x1 + max(0,
    w - 1)) (same for y), kept where x2 >= x1 and y2 >= y1; score 1."""
    boxes: dict[int, list[list[float]]] = defaultdict(list)
    for image_id in sorted(coco.imgs):
        image = coco.imgs[image_id]
        if 'width' not in image or 'height' not in image:
            raise PoseDataError(f'{ann_file}: image {image_id} has no width and height, needed for the boxes')
        width, height = image['width'], image['height']
        for ann in coco.imgToAnns.get(image_id, []):
            if ann.get('category_id') != category_id or ann.get('iscrowd', 0) or 'bbox' not in ann:
                continue
            if not ann.get('keypoints') or max(ann['keypoints']) == 0 or ann.get('area', 0) <= 0:
                continue
            x, y, w, h = (float(v) for v in ann['bbox'])
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1)), min(height - 1.0, y1 + max(0.0, h - 1))
            if x2 >= x1 and y2 >= y1:
                boxes[image_id].append([x1, y1, x2 - x1, y2 - y1, 1.0])
    return dict(boxes)


def rescore(box_scores: np.ndarray, keypoint_scores: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Instance scores: box score x mean of the keypoint scores above `threshold` (0 where none is), the official
    rescoring (mmpose: score_mode='bbox_keypoint', keypoint_score_thr=0.2)."""
    keypoint_scores = np.asarray(keypoint_scores, dtype=np.float64)
    above = keypoint_scores > threshold
    count = above.sum(axis=-1)
    mean = np.where(count > 0, np.where(above, keypoint_scores, 0.0).sum(axis=-1) / np.maximum(count, 1), 0.0)
    return np.asarray(box_scores, dtype=np.float64) * mean


def keypoint_oks(reference: np.ndarray, others: np.ndarray, reference_area: float, other_areas: np.ndarray,
                 sigmas: Sequence[float]) -> np.ndarray:
    """OKS of one pose (K, 2+) with each of `others` (M, K, 2+), over all keypoints, the object scale being the mean
    of the two areas: mean_k exp(-d_k^2 / (2 * (area_a + area_b) / 2 * (2 sigma_k)^2))."""
    variances = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    delta = np.asarray(others, dtype=np.float64)[..., :2] - np.asarray(reference, dtype=np.float64)[None, :, :2]
    scale = (reference_area + np.asarray(other_areas, dtype=np.float64)) / 2 + np.spacing(1)
    exponent = (delta ** 2).sum(-1) / variances / scale[:, None] / 2
    return np.exp(-exponent).mean(axis=-1) if exponent.shape[-1] else np.zeros(len(delta))


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float = 0.9,
            sigmas: Sequence[float] = COCO_KEYPOINT_SIGMAS) -> list[int]:
    """Greedy OKS non-maximum suppression: indices kept, highest score first; a pose is dropped when its OKS with a
    kept one exceeds `threshold`. Ties in score are visited in the references' order (numpy's argsort, reversed)."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    order = np.argsort(np.asarray(scores))[::-1]
    keep: list[int] = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(int(best))
        overlap = keypoint_oks(keypoints[best], keypoints[rest], float(areas[best]), np.asarray(areas)[rest], sigmas)
        order = rest[overlap <= threshold]
    return keep


def coco_keypoint_stats(coco: Any, results: list[dict[str, Any]], sigmas: Sequence[float] = COCO_KEYPOINT_SIGMAS,
                        result_areas: Sequence[float] | None = None) -> tuple[dict[str, float], str]:
    """COCOeval(iouType='keypoints') of `results` against `coco` with these OKS sigmas: the ten stats by name and
    COCOeval's printed summary. `result_areas` replace the areas loadRes gives the results (their keypoints'
    extent)."""
    _, COCOeval = _pycocotools()
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        detections = coco.loadRes([dict(r) for r in results])  # loadRes adds fields to the dicts it gets
        for ann, area in zip(detections.dataset['annotations'], result_areas or ()):
            ann['area'] = area
        evaluator = COCOeval(coco, detections, 'keypoints')
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = '\n'.join(line for line in output.getvalue().splitlines() if 'Average' in line)
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}, summary


def wholebody_keypoint_stats(coco: Any, results: list[dict[str, Any]],
                             sigmas: Sequence[float]) -> tuple[dict[str, dict[str, float]], str]:
    """The COCOeval stats of 133-keypoint `results` against a COCO-WholeBody `coco` (read by
    `load_keypoint_annotations`) for each part and the whole body, scored as xtcocotools' COCOeval scores mmpose's
    CocoWholeBodyMetric (module docstring); and the summaries, one block per part."""
    COCO, _ = _pycocotools()

    def extent(points: Sequence[float]) -> float:
        xs, ys = points[0::3], points[1::3]
        return (max(xs) - min(xs)) * (max(ys) - min(ys))

    parts = {name: (start, end) for name, (start, end, _) in WHOLEBODY_PARTS.items()}
    stats, summaries = {}, []
    for name, (start, end) in dict(parts, wholebody=(0, COCO_WHOLEBODY_KEYPOINTS.num_joints)).items():
        annotations = []
        for ann in coco.dataset['annotations']:
            points = ann['keypoints'][3 * start:3 * end]
            annotations.append(dict(ann, keypoints=points, num_keypoints=sum(1 for v in points[2::3] if v > 0)))
        part = COCO()
        part.dataset = dict(coco.dataset, annotations=annotations)
        with contextlib.redirect_stdout(io.StringIO()):
            part.createIndex()
        kept = [r for r in results if any(v > 0 for v in r['keypoints'][3 * start + 2:3 * end:3])]
        stats[name], summary = coco_keypoint_stats(
            part, [dict(r, keypoints=r['keypoints'][3 * start:3 * end]) for r in kept], sigmas[start:end],
            [extent(r['keypoints'][:3 * parts['body'][1]]) for r in kept])
        summaries.append(f'{name}:\n{summary}')
    return stats, '\n'.join(summaries)


def _heatmaps(model: nn.Module, crops: Tensor, flip_test: bool, shift_heatmap: bool,
              flip_pairs: Sequence[tuple[int, int]]) -> Tensor:
    """The model's heatmaps, with the flip test (`flip_test_heatmaps`) done with the evaluated set's pairs."""
    inputs = model.normalize(crops)
    return (flip_test_heatmaps(model, inputs, flip_pairs, shift_heatmap) if flip_test else model(inputs)).float()


def evaluation_keypoints(
        model_info: KeypointInfo | None,
        num_joints: int,
        category: Mapping[str, Any],
        keypoint_set: KeypointInfo | str | PathLike | None = None,
        keypoint_sigmas: Sequence[float] | None = None,
        ann_file: str | PathLike = 'annotation file',
) -> tuple[KeypointInfo, tuple[float, ...]]:
    """The keypoint set to evaluate with, and its OKS sigmas.

    The set is `keypoint_set` (a `KeypointInfo` or a JSON / YAML keypoint file) when given, else the model's own
    (the one it was trained with), else the annotation category's (COCO's set for COCO's names; otherwise flip pairs
    from left/right names, no sigmas). A built-in set (COCO, MPII) is the model's own only when the category names
    its keypoints: models get it by joint count, and a 17-keypoint animal set is not COCO. The sigmas are
    `keypoint_sigmas`, else the set's. A set or sigmas that do not fit the model's joint count, or no sigmas at all,
    is a ValueError saying what to give.
    """
    annotated = len(category['keypoints'])
    if annotated != num_joints:
        raise PoseDataError(f'{ann_file} annotates {annotated} keypoints, the model predicts {num_joints}')
    if isinstance(keypoint_set, (str, PathLike)):
        keypoint_set = read_keypoint_file(keypoint_set)
    if keypoint_set is not None:
        info = keypoint_set
    elif model_info is not None and (model_info.keypoint_names == tuple(category['keypoints'])
                                     or model_info not in KEYPOINT_SETS.values()):
        info = model_info
    else:
        info = keypoints_from_category(category)
    if info.num_joints != num_joints:
        raise ValueError(f'the keypoint set {info.name!r} has {info.num_joints} keypoints, the model predicts '
                         f'{num_joints}')
    sigmas = info.sigmas if keypoint_sigmas is None else tuple(float(s) for s in keypoint_sigmas)
    if sigmas is None:
        raise ValueError(f'no OKS sigmas known for the {num_joints} keypoints of {info.name!r}: give them in a '
                         'keypoint set file ("sigmas"; --keypoint-set) or as keypoint_sigmas (--sigmas), one per '
                         'keypoint')
    if len(sigmas) != num_joints:
        raise ValueError(f'{len(sigmas)} keypoint sigmas for a model with {num_joints} keypoints')
    if not all(np.isfinite(s) and s > 0 for s in sigmas):
        raise ValueError(f'OKS sigmas must be positive, got {list(sigmas)}')
    return info, sigmas


def _check_size(path: Path, size: tuple[int, ...], info: dict[str, Any]) -> None:
    """The decoded image has the annotated size: otherwise the annotations belong to other pixels. (The official
    code reads with cv2.IMREAD_IGNORE_ORIENTATION; timm_hrnet.images applies the EXIF orientation, so an image whose
    tag swaps width and height is refused here rather than evaluated against turned annotations.)"""
    if 'height' not in info or 'width' not in info or size == (info['height'], info['width']):
        return
    turned = size == (info['width'], info['height'])
    raise PoseDataError(f'image {path} is {size[1]}x{size[0]} pixels, the annotation file says {info["width"]}x'
                        f'{info["height"]}' + (' (its EXIF orientation turns it)' if turned else ''))


@torch.inference_mode()
def evaluate_pose(
        model: nn.Module,
        ann_file: str | PathLike,
        image_dir: str | PathLike,
        det_file: str | PathLike | None = None,
        *,
        gt_boxes: bool = False,
        box_score_thr: float = 0.0,
        flip_test: bool = True,
        shift_heatmap: bool | None = None,
        rescore_thr: float = 0.2,
        oks_nms_thr: float = 0.9,
        keypoint_sigmas: Sequence[float] | None = None,
        keypoint_set: KeypointInfo | str | PathLike | None = None,
        batch_size: int = 32,
        results_file: str | PathLike | None = None,
        progress: bool = True,
        read_ahead_images: int = 2,
) -> dict[str, Any]:
    """COCO keypoint AP / AR of an `HRNetPose` (the module docstring has the protocol) on person boxes from
    `det_file` or, with `gt_boxes`, the annotated ones.

    The OKS sigmas and flip pairs are those of the keypoint set (`evaluation_keypoints`: `keypoint_set`, else the
    model's, else the annotation category's); `keypoint_sigmas` overrides the set's sigmas. Boxes are cropped, flipped
    and decoded by the model's `codec` (`shift_heatmap` None: the codec's flip shift). The results JSON (COCO
    server format) is written to `results_file` when given. Under an initialised torch.distributed group each rank
    runs the images rank::world_size and every rank returns the same numbers. Returns the ten COCOeval stats (AP,
    AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl; fractions; on COCO-WholeBody the whole body's, and `parts`: the
    ten of body, foot, face, lefthand, righthand and wholebody), counts, throughput and the settings.
    """
    if gt_boxes == (det_file is not None):
        raise ValueError('give a detection results file (det_file) or gt_boxes=True, not both or neither')
    if batch_size < 1:
        raise ValueError(f'batch_size must be positive, got {batch_size}')
    coco, category = load_keypoint_annotations(ann_file)
    info, sigmas = evaluation_keypoints(getattr(model, 'keypoint_info', None), model.num_joints, category,
                                        keypoint_set, keypoint_sigmas, ann_file)
    wholebody = tuple(category['keypoints']) == COCO_WHOLEBODY_KEYPOINTS.keypoint_names
    codec = parse_codec(getattr(model, 'codec', 'official'))
    shift_heatmap = codec.shift_flip if shift_heatmap is None else shift_heatmap
    boxes = ground_truth_boxes(coco, category['id'], ann_file) if gt_boxes else detection_boxes(
        det_file, coco, category['id'], box_score_thr)
    if not boxes:
        source = f'{ann_file} (ground-truth boxes)' if gt_boxes else f'{det_file} (score >= {box_score_thr})'
        raise PoseDataError(f'no person boxes to evaluate in {source}')
    image_dir = Path(image_dir)
    paths = {image_id: image_dir / coco.imgs[image_id]['file_name'] for image_id in boxes}
    missing = sorted(str(p) for p in paths.values() if not p.is_file())
    if missing:
        raise PoseDataError(f'image not found: {missing[0]} ({len(missing)} of {len(paths)} images missing)')

    rank, world_size = rank_and_world_size()
    mine = sorted(boxes)[rank::world_size]
    device = next(model.parameters()).device
    aspect = model.input_size[1] / model.input_size[0]
    was_training = model.training
    model.eval()
    instances: dict[int, list[tuple[np.ndarray, float, float]]] = defaultdict(list)
    failure: BaseException | None = None
    count_boxes = sum(len(boxes[i]) for i in mine)
    bar = tqdm(total=count_boxes, desc='evaluate-pose', unit='box', disable=not progress or rank != 0)
    start = time.perf_counter()
    crops: list[Tensor] = []
    pending: list[tuple[int, Tensor, Tensor, float]] = []  # image id, centres, sizes, box scores per image

    def run_batches(final: bool) -> None:
        while crops and (final or sum(len(c) for c in crops) >= batch_size):
            batch = torch.cat(crops)
            take, rest = batch[:batch_size], batch[batch_size:]
            crops[:] = [rest] if len(rest) else []
            heatmaps = _heatmaps(model, take, flip_test, shift_heatmap, info.flip_pairs)
            centers = torch.cat([c for _, c, _, _ in pending])[:len(take)]
            sizes = torch.cat([s for _, _, s, _ in pending])[:len(take)]
            keypoints, scores = decode_heatmaps(heatmaps, centers, sizes, codec=codec)
            points = torch.cat([keypoints, scores.unsqueeze(-1)], -1).cpu().numpy()
            done = 0
            while done < len(take):
                image_id, c, s, box_scores = pending[0]
                use = min(len(c), len(take) - done)
                areas = s[:use].prod(-1).tolist()
                for k in range(use):
                    instances[image_id].append((points[done + k], float(box_scores[k]), areas[k]))
                done += use
                if use == len(c):
                    pending.pop(0)
                else:
                    pending[0] = (image_id, c[use:], s[use:], box_scores[use:])
            bar.update(len(take))

    def load(image_id: int) -> Tensor | UnreadableImageError:
        try:
            return image_to_tensor(paths[image_id], model.in_chans)
        except UnreadableImageError as error:
            return error

    try:
        for image_id, pixels in read_ahead(load, mine, read_ahead_images):
            if isinstance(pixels, UnreadableImageError):
                raise PoseDataError(str(pixels))
            _check_size(paths[image_id], tuple(pixels.shape[-2:]), coco.imgs[image_id])
            image_boxes = torch.tensor(boxes[image_id], dtype=torch.float32)
            centers, sizes = box_to_center_size(image_boxes[:, :4], aspect)
            crops.append(crop_boxes(pixels.to(device), centers.to(device), sizes.to(device), model.input_size, codec))
            pending.append((image_id, centers.to(device), sizes.to(device), image_boxes[:, 4]))
            run_batches(final=False)
        run_batches(final=True)
    except Exception as error:  # raised below on this rank; the other ranks stop too instead of waiting
        failure = error
    finally:
        bar.close()
        model.train(was_training)
    elapsed = time.perf_counter() - start

    results = []
    for image_id in mine if failure is None else ():
        points = np.stack([p for p, _, _ in instances[image_id]])
        scores = rescore(np.array([b for _, b, _ in instances[image_id]]), points[..., 2], rescore_thr)
        areas = np.array([a for _, _, a in instances[image_id]])
        for k in oks_nms(points, scores, areas, oks_nms_thr, sigmas):
            results.append(dict(image_id=image_id, category_id=category['id'],
                                keypoints=[float(v) for v in points[k].reshape(-1)], score=float(scores[k])))
    shards = gather_or_raise(dict(results=results, images=len(mine), boxes=count_boxes), failure, PoseDataError)
    results = sorted((r for shard in shards for r in shard['results']), key=lambda r: r['image_id'])
    elapsed = max_over_ranks(elapsed)
    stats, summary = None, ''
    if rank == 0:
        if wholebody:
            parts, summary = wholebody_keypoint_stats(coco, results, sigmas)
            stats = dict(parts['wholebody'], parts=parts)
        else:
            stats, summary = coco_keypoint_stats(coco, results, sigmas)
    stats, summary = broadcast_from_main((stats, summary))
    if rank == 0 and results_file is not None:  # after the broadcast: a failed write cannot leave a rank waiting
        write_json(results_file, results, indent=None)
    num_images = sum(shard['images'] for shard in shards)
    num_boxes = sum(shard['boxes'] for shard in shards)
    return dict(
        **stats,
        num_images=num_images,
        num_annotated_images=len(coco.imgs),
        num_boxes=num_boxes,
        num_results=len(results),
        images_per_second=num_images / elapsed if elapsed > 0 else float('nan'),
        boxes_per_second=num_boxes / elapsed if elapsed > 0 else float('nan'),
        gt_boxes=gt_boxes,
        flip_test=flip_test,
        shift_heatmap=shift_heatmap,
        box_score_thr=None if gt_boxes else box_score_thr,
        rescore_thr=rescore_thr,
        oks_nms_thr=oks_nms_thr,
        keypoint_set=info.name,
        sigmas=list(sigmas),
        codec=codec.spec,
        input_size=list(model.input_size),
        world_size=world_size,
        results_file=None if results_file is None else str(results_file),
        summary=summary,
    )
