"""Real photos and video: person detection before pose, batching across frames, folders and videos in the CLI."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from task_reference import official_shapes, random_checkpoint, tiny_extra
from torch import nn

from timm_hrnet import HRNetPose, HRNetSeg, create_pose_model, create_seg_model
from timm_hrnet.tasks.detection import PersonDetector, detect_people, person_detector
from timm_hrnet.tasks.drawing import distinct_colours, draw_legend, draw_pose
from timm_hrnet.tasks.media import UnreadableVideoError, read_frames, video_fps, write_video
from timm_hrnet.tasks.pipeline import pose_frames, segment_frames
from timm_hrnet.tools.cli import main as cli_main
from timm_hrnet.tools.cli_common import CliError
from timm_hrnet.tools.task_cli import add_pose_parser, add_segment_parser

pytest.importorskip('av', reason='could not import av (PyAV, the video extra)')
pytestmark = pytest.mark.usefixtures('single_torch_thread')


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog='timm-hrnet')
    subparsers = parser.add_subparsers(dest='command', required=True)
    add_pose_parser(subparsers)
    add_segment_parser(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


class FakeDetector(nn.Module):
    """torchvision's detection output format with fixed boxes: two people, a low-scoring person, a dog."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        boxes = torch.tensor([[4.0, 6.0, 30.0, 50.0], [20.0, 2.0, 55.0, 60.0], [0.0, 0.0, 10.0, 10.0],
                              [1.0, 1.0, 20.0, 20.0]])
        return [dict(boxes=boxes, labels=torch.tensor([1, 1, 1, 18]), scores=torch.tensor([0.7, 0.9, 0.2, 0.99]))
                for _ in images]


@pytest.fixture(scope='module')
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('pipeline')
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (70, 60, 3), dtype=np.uint8) for _ in range(5)]
    paths = dict(pose=folder / 'pose_tiny_64x48.pth', seg=folder / 'seg_tiny.pth', video=folder / 'clip.mp4',
                 images=folder / 'images', broken_video=folder / 'broken.mp4')
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17)), paths['pose'])
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 19)), paths['seg'])
    paths['images'].mkdir()
    for k, frame in enumerate(frames[:3]):
        Image.fromarray(frame).save(paths['images'] / f'img{k}.png')
    with write_video(paths['video'], fps=5) as video:
        for frame in frames:
            video.write(frame)
    paths['broken_video'].write_bytes(b'\x00\x00\x00\x18ftypmp42' + b'\x07' * 500)
    return paths


def test_person_detector_keeps_people_above_the_threshold() -> None:
    detector = PersonDetector(FakeDetector(), score_threshold=0.5)
    (boxes,) = detector.detect([torch.zeros(3, 64, 64)])
    # best first, as x, y, w, h, score; the low-scoring person and the dog are gone
    assert torch.allclose(boxes, torch.tensor([[20.0, 2.0, 35.0, 58.0, 0.9], [4.0, 6.0, 26.0, 44.0, 0.7]]))
    assert len(detect_people(FakeDetector(), [torch.zeros(3, 8, 8)])[0]) == 3  # a bare model: every person
    assert torch.equal(detect_people(lambda image: [[1, 2, 3, 4]], [torch.zeros(3, 8, 8)])[0],
                       torch.tensor([[1.0, 2.0, 3.0, 4.0, 1.0]]))
    with pytest.raises(ValueError, match=r'\(P, 4\) or \(P, 5\)'):
        detect_people(lambda image: torch.zeros(2, 3), [torch.zeros(3, 8, 8)])


def test_predict_with_a_detector_equals_predict_with_its_boxes(files: dict[str, Path]) -> None:
    model = create_pose_model(files['pose'])
    image = next(read_frames(files['images'])).image
    detected = model.predict(image, detector=PersonDetector(FakeDetector()))
    given = model.predict(image, boxes=[[20.0, 2.0, 35.0, 58.0, 0.9], [4.0, 6.0, 26.0, 44.0, 0.7]])
    for key in ('keypoints', 'scores', 'boxes', 'box_scores'):
        assert torch.allclose(detected[key], given[key]), key
    assert detected['box_scores'].tolist() == pytest.approx([0.9, 0.7])
    nobody = model.predict(image, detector=lambda pixels: torch.zeros(0, 5))
    assert nobody['keypoints'].shape == (0, 17, 2) and nobody['scores'].shape == (0, 17)
    with pytest.raises(ValueError, match='not both'):
        model.predict(image, boxes=[[0, 0, 5, 5]], detector=FakeDetector())


def test_torchvision_detector_with_random_weights_runs(files: dict[str, Path]) -> None:
    detector = person_detector('fasterrcnn_mobilenet_v3_large_320_fpn', weights=None, score_threshold=0.0)
    model = create_pose_model(files['pose'])
    result = model.predict(next(read_frames(files['images'])).image, detector=detector)
    assert result['keypoints'].shape[0] == result['boxes'].shape[0] == result['box_scores'].shape[0]
    with pytest.raises(ValueError, match='unknown torchvision detection model'):
        person_detector('resnet50', weights=None)


def test_frames_are_batched_across_frames_with_the_same_results(files: dict[str, Path]) -> None:
    model = create_pose_model(files['pose'])
    frames = list(read_frames(files['video']))
    assert len(frames) == 5 and video_fps(files['video']) == 5
    boxes = [[2.0, 3.0, 30.0, 40.0], [10.0, 10.0, 40.0, 50.0]]
    batched = list(pose_frames(model, frames, boxes=boxes, frames_per_batch=3, crops_per_batch=4))
    assert [frame.name for frame, _ in batched] == [f'clip_{k:06d}' for k in range(5)]
    for frame, result in batched:
        alone = model.predict(frame.image, boxes=boxes)
        assert torch.allclose(result['keypoints'], alone['keypoints'], atol=1e-4)
        assert torch.allclose(result['scores'], alone['scores'], atol=1e-5)
    seg = create_seg_model(files['seg'])
    (first, labels), *_ = segment_frames(seg, frames[:1])
    assert torch.equal(labels['labels'], seg.predict(first.image)['labels'])


def test_pose_cli_on_a_video_writes_video_and_json_per_frame(files: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'out'
    assert run(['pose', str(files['video']), '--checkpoint', str(files['pose']), '--out', str(out),
                '--detector', 'fasterrcnn_mobilenet_v3_large_320_fpn', '--detector-weights', 'none',
                '--detector-threshold', '0']) == 0
    assert f'5 frame(s), wrote {out}' in capsys.readouterr().out
    records = [json.loads(line) for line in (out / 'clip.jsonl').read_text().splitlines()]
    assert [r['index'] for r in records] == list(range(5)) and all('people' in r for r in records)
    assert len(list(read_frames(out / 'clip.mp4'))) == 5
    assert sorted(p.name for p in out.iterdir()) == ['clip.jsonl', 'clip.mp4']


def test_cli_on_folders(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'pose'
    assert run(['pose', str(files['images']), '--checkpoint', str(files['pose']), '--out', str(out),
                '--box', '0', '0', '30', '40', '--json']) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r['frame'] for r in lines] == ['img0', 'img1', 'img2'] and len(lines[0]['people']) == 1
    assert json.loads((out / 'img1.json').read_text()) == lines[1]
    assert Image.open(out / 'img2.png').size == (60, 70)
    seg_out = tmp_path / 'seg'
    assert run(['segment', str(files['images']), '--checkpoint', str(files['seg']), '--out', str(seg_out)]) == 0
    assert sorted(p.name for p in seg_out.iterdir()) == sorted(
        f'img{k}.{ext}' for k in range(3) for ext in ('json', 'png'))
    assert run(['segment', str(files['video']), '--checkpoint', str(files['seg']), '--out', str(seg_out)]) == 0
    assert len(list(read_frames(seg_out / 'clip.mp4'))) == 5


def test_bad_videos_fail_in_one_line_and_leave_nothing(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / 'out'
    with pytest.raises(CliError, match='cannot read video .*broken.mp4'):
        run(['pose', str(files['broken_video']), '--checkpoint', str(files['pose']), '--out', str(out)])
    assert list(out.iterdir()) == []
    with pytest.raises(CliError, match='video not found'):
        run(['pose', str(tmp_path / 'missing.mp4'), '--checkpoint', str(files['pose'])])
    with pytest.raises(UnreadableVideoError, match='broken.mp4'):
        list(read_frames(files['broken_video']))
    with pytest.raises(CliError, match='--out must be a directory'):
        (tmp_path / 'file.txt').write_text('x')
        run(['pose', str(files['images']), '--checkpoint', str(files['pose']), '--out', str(tmp_path / 'file.txt')])


def test_people_get_distinct_colours_and_masks_a_legend() -> None:
    colours = distinct_colours(6)
    assert len(set(colours)) == 6
    keypoints = torch.tensor([[[5.0, 5.0], [15.0, 5.0]], [[5.0, 15.0], [15.0, 15.0]]])
    drawn = np.asarray(draw_pose(Image.new('RGB', (20, 20)), keypoints, torch.ones(2, 2), ((0, 1),)))
    assert tuple(drawn[5, 10]) == colours[0] and tuple(drawn[15, 10]) == colours[1]
    labels = torch.zeros(60, 120, dtype=torch.long)
    labels[:, 80:] = 2
    legend = draw_legend(Image.new('RGB', (120, 60), (0, 0, 0)), labels, ('road', 'wall', 'sky'),
                         ((255, 0, 0), (0, 255, 0), (0, 0, 255)))
    assert legend.size == (120, 60)
    pixels = {tuple(p) for p in np.asarray(legend).reshape(-1, 3)}
    assert (255, 0, 0) in pixels and (0, 0, 255) in pixels and (0, 255, 0) not in pixels  # only classes present


def test_a_model_error_in_a_folder_or_video_names_the_file(files: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """A ValueError from predict is the whole message after the image file (or video frame) it came from, not a
    traceback."""
    real, calls = HRNetSeg.predict, []

    def fails_second(self: HRNetSeg, image: object, **kwargs: object) -> dict:
        calls.append(image)
        if len(calls) == 2:
            raise ValueError('window (900, 900) does not fit\nsecond line')
        return real(self, image, **kwargs)
    monkeypatch.setattr(HRNetSeg, 'predict', fails_second)
    assert cli_main(['segment', str(files['images']), '--checkpoint', str(files['seg'])]) == 2
    image = files['images'] / 'img1.png'
    assert capsys.readouterr().err == (f'timm-hrnet segment: error: cannot run on {image}: window (900, 900) does '
                                       'not fit\nsecond line\n')
    calls.clear()
    out = tmp_path / 'out'
    assert cli_main(['segment', str(files['video']), '--checkpoint', str(files['seg']), '--out', str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"timm-hrnet segment: error: cannot run on {files['video']} frame 1: ")
    assert [p.name for p in out.iterdir()] == []  # nothing half-written

    def fails(self: HRNetPose, *args: object, **kwargs: object) -> list:
        raise ValueError('no usable box')
    monkeypatch.setattr(HRNetPose, 'predict_batch', fails)
    assert cli_main(['pose', str(files['images']), '--checkpoint', str(files['pose'])]) == 2
    first, last = files['images'] / 'img0.png', files['images'] / 'img2.png'
    assert capsys.readouterr().err == ('timm-hrnet pose: error: cannot run on one of 3 frames run together '
                                       f'({first} ... {last}): no usable box\n')
