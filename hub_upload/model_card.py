"""Model cards (README.md) for converted HRNet weights, built with huggingface_hub's ModelCard / ModelCardData:
``build_model_card`` for the timm classifiers, ``build_task_model_card`` for the pose and segmentation models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ['CardFacts', 'Complexity', 'HRNET_CITATION', 'IMAGENET_1K', 'POSE_CITATION', 'TaskFacts', 'Verification',
           'build_model_card', 'build_task_model_card', 'dataset_title', 'source_title']

OFFICIAL_CODE_URL = 'https://github.com/HRNet/HRNet-Image-Classification'
HRNET_CITATION = """@article{WangSCJDZLMTWLX19,
  title={Deep High-Resolution Representation Learning for Visual Recognition},
  author={Jingdong Wang and Ke Sun and Tianheng Cheng and Borui Jiang and Chaorui Deng and Yang Zhao and Dong Liu
          and Yadong Mu and Mingkui Tan and Xinggang Wang and Wenyu Liu and Bin Xiao},
  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year={2019}
}"""
OCR_CITATION = """@inproceedings{YuanCW20,
  title={Object-Contextual Representations for Semantic Segmentation},
  author={Yuan, Yuhui and Chen, Xilin and Wang, Jingdong},
  booktitle={ECCV},
  year={2020}
}"""
POSE_CITATION = """@inproceedings{sun2019deep,
  title={Deep High-Resolution Representation Learning for Human Pose Estimation},
  author={Sun, Ke and Xiao, Bin and Liu, Dong and Wang, Jingdong},
  booktitle={CVPR},
  year={2019}
}"""
IMAGENET_1K = 'imagenet-1k'
# timm_hrnet.task_data's dataset / keypoint set names, as the cards spell them
_DATASET_TITLES = {
    IMAGENET_1K: 'ImageNet-1k', 'coco': 'COCO', 'mpii': 'MPII', 'cityscapes': 'Cityscapes', 'lip': 'LIP',
    'pascal_context': 'PASCAL-Context (60 classes)', 'pascal_context_59': 'PASCAL-Context (59 classes)',
    'ade20k': 'ADE20K', 'cocostuff': 'COCO-Stuff',
}
# what the layout alone tells; who published the file is only stated when a manifest (source_title) names it
_LAYOUT_TITLES = {
    'mmpretrain': 'a checkpoint in the mmpretrain layout',
    'canonical': 'a checkpoint in the canonical (official / timm) layout',
    'official': 'a checkpoint in the official HRNet-Image-Classification layout',
    'timm': "a checkpoint in timm's layout",
}


@dataclass(frozen=True)
class CardFacts:
    """What the source publishes about a checkpoint; everything optional except the layout it came in."""

    source: str = 'auto'  # the layout the checkpoint came in (auto: detected)
    source_title: str | None = None  # who published it, e.g. 'OpenMMLab mmpretrain model zoo' (manifests say so)
    source_name: str | None = None  # the source's own model name, e.g. hrnet-w18_3rdparty_8xb32_in1k
    source_url: str | None = None  # where the checkpoint was downloaded from
    source_config: str | None = None
    converted_from: str | None = None  # the weights the source itself converted (mmpretrain's 3rdparty models)
    license: str = 'mit'
    dataset: str | None = None  # what the weights were trained / fine-tuned on; None: not stated
    top1: float | None = None
    top5: float | None = None
    source_params: int | None = None
    source_flops: int | None = None
    results_url: str | None = None  # where the published accuracy comes from
    description: str | None = None


@dataclass(frozen=True)
class Verification:
    """How the staged weights were checked against their source (``hub_upload.verify.VerifyReport``)."""

    reference: str  # the code that ran the source checkpoint
    independent: bool
    max_abs_diff: float

    def sentence(self) -> str:
        if self.independent:
            return (f'hub_upload checked that the converted model reproduces the source checkpoint\'s outputs as '
                    f'computed by {self.reference} (largest logit difference {self.max_abs_diff:.2g}).')
        return (f'hub_upload could check this conversion only for self-consistency ({self.reference}); it was not '
                'compared with an independent implementation of the source.')


@dataclass(frozen=True)
class Complexity:
    """Parameters and multiply-accumulates of one image (``timm_hrnet.tools.model_table.count_params_and_macs``)."""

    params: int
    macs: int
    input_size: tuple[int, int, int]


def source_title(facts: CardFacts) -> str:
    """Who the weights come from: the publisher a manifest names, else only what the layout tells."""
    return facts.source_title or _LAYOUT_TITLES.get(facts.source, f'a checkpoint in the {facts.source} layout')


def dataset_title(dataset: str) -> str:
    return _DATASET_TITLES.get(dataset, dataset)


def _result_source(facts: CardFacts) -> dict[str, str]:
    """Where the published numbers come from; the model-index schema wants a URL whenever a source is named."""
    url = facts.results_url or facts.source_url
    return dict(source_name=facts.source_title or facts.source, source_url=url) if url else {}


def _eval_results(facts: CardFacts) -> list[EvalResult] | None:
    if facts.dataset is None:  # a result on an unnamed dataset is not a model-index result
        return None
    metrics = [('Top 1 Accuracy', facts.top1), ('Top 5 Accuracy', facts.top5)]
    results = [
        EvalResult(
            task_type='image-classification',
            task_name='Image Classification',
            dataset_type=facts.dataset,
            dataset_name=dataset_title(facts.dataset),
            dataset_split='validation',
            metric_type='accuracy',
            metric_name=name,
            metric_value=value,
            **_result_source(facts),
        )
        for name, value in metrics
        if value is not None
    ]
    return results or None


def _details_table(rows: list[tuple[str, str]]) -> str:
    lines = ['| | |', '|---|---|']
    lines += [f'| {key} | {value} |' for key, value in rows]
    return '\n'.join(lines)


def build_model_card(
        repo_id: str,
        architecture: str,
        pretrained_cfg: dict,
        complexity: Complexity,
        facts: CardFacts,
        source_file: str,
        source_sha256: str,
        verification: Verification,
) -> ModelCard:
    """A model card whose YAML metadata carries license, dataset and model-index results, plus usage and citation.

    The paper comes from ``pretrained_cfg`` (``paper_name`` / ``paper_ids``, as timm_hrnet's pretrained cfgs set them).
    Only what was stated or measured is claimed: no dataset unless one is known, results only on a named dataset,
    and the verification sentence says whether the source's outputs were reproduced or only self-consistency checked.
    """
    model_name = repo_id.split('/')[-1]
    num_classes = pretrained_cfg['num_classes']
    eval_results = _eval_results(facts)
    card_data = ModelCardData(
        library_name='timm',
        pipeline_tag='image-classification',
        license=facts.license,
        tags=['image-classification', 'timm', 'hrnet', 'timm_hrnet'],
        datasets=[facts.dataset] if facts.dataset else None,
        metrics=['accuracy'] if eval_results else None,
        model_name=model_name,
        eval_results=eval_results,
    )
    source = source_title(facts)
    source_link = f'[{source_file}]({facts.source_url})' if facts.source_url else f'`{source_file}`'
    rows = [
        ('Model type', 'Image classification / feature backbone'),
        ('Architecture', f'`{architecture}`'),
        ('Params (M)', f'{complexity.params / 1e6:.2f}'),
        ('GMACs', f'{complexity.macs / 1e9:.2f} (at {complexity.input_size[1]}x{complexity.input_size[2]})'),
        ('Image size', f'{complexity.input_size[1]} x {complexity.input_size[2]}'),
        ('Preprocessing', _preprocessing_text(pretrained_cfg)),
        ('Classes', str(num_classes)),
        ('Dataset', dataset_title(facts.dataset) if facts.dataset else 'not stated'),
        *_paper_row(pretrained_cfg),
        ('Original code', OFFICIAL_CODE_URL),
        ('Source', source + (f', `{facts.source_name}`' if facts.source_name else '')),
        ('Source checkpoint', f'{source_link} (sha256 `{source_sha256}`)'),
    ]
    if facts.source_config:
        rows.append(('Source config', facts.source_config))
    if facts.converted_from:
        rows.append(('Source converted from', facts.converted_from))
    if facts.source_params is not None:
        rows.append(('Params reported by the source', f'{facts.source_params:,}'))
    if facts.source_flops is not None:
        rows.append(('FLOPs reported by the source', f'{facts.source_flops:,}'))
    rows.append(('License', facts.license))

    trained = (f'trained on {dataset_title(facts.dataset)}' if facts.dataset
               else f'with {num_classes} classes (the training data is not stated)')
    description = facts.description or (
        f'An HRNet image classification model {trained}. The weights come from {source}'
        + (f' (`{facts.source_name}`)' if facts.source_name else '')
        + ", converted to the timm layout by timm_hrnet's `hub_upload`."
    )
    sections = [
        f'# Model card for {model_name}',
        f'{description} {verification.sentence()}',
        '## Model Details',
        _details_table(rows),
    ]
    if facts.top1 is not None and facts.dataset:
        sections += ['## Results', _results_table(facts)]
    sections += ['## Model Usage', _usage(repo_id, min(5, num_classes)), '## Citation',
                 f'```bibtex\n{HRNET_CITATION}\n```']
    content = f'---\n{card_data.to_yaml()}\n---\n\n' + '\n\n'.join(sections) + '\n'
    return ModelCard(content)


def _paper_row(cfg: dict) -> list[tuple[str, str]]:
    """The paper linked to arXiv when its id is one (e.g. 'arXiv:1908.07919'); nothing when the cfg names none."""
    name, paper_id = cfg.get('paper_name'), cfg.get('paper_ids')
    if not name:
        return []
    if paper_id and paper_id.lower().startswith('arxiv:'):
        return [('Paper', f"[{name}](https://arxiv.org/abs/{paper_id.split(':', 1)[1]})")]
    return [('Paper', name)]


def _preprocessing_text(cfg: dict) -> str:
    size = cfg['input_size'][-1]
    resize = round(size / cfg['crop_pct'])
    text = (
        f'resize shorter side to {resize} ({cfg["interpolation"]}), center crop {size}, '
        f'normalize mean {tuple(cfg["mean"])} std {tuple(cfg["std"])}'
    )
    test_size = (cfg.get('test_input_size') or cfg['input_size'])[-1]
    test_crop_pct = cfg.get('test_crop_pct') or cfg['crop_pct']
    if (test_size, test_crop_pct) != (size, cfg['crop_pct']):
        text += f'; published accuracy measured at {test_size} with crop_pct {test_crop_pct}'
    return text


def _results_table(facts: CardFacts) -> str:
    top5 = f'{facts.top5:.2f}' if facts.top5 is not None else '-'
    reporter = facts.source_title or facts.source
    url = facts.results_url or facts.source_url
    split = 'val' if facts.dataset == IMAGENET_1K else 'validation'
    return '\n'.join([
        '| Dataset | Top-1 (%) | Top-5 (%) | Reported by |',
        '|---|---|---|---|',
        f'| {dataset_title(facts.dataset)} {split} | {facts.top1:.2f} | {top5} | '
        f'{f"[{reporter}]({url})" if url else reporter} |',
    ])


def _usage(repo_id: str, topk: int) -> str:
    return f"""### Image classification
```python
from urllib.request import urlopen

import timm
import torch
from PIL import Image

img = Image.open(urlopen(
    'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png'
))
model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()
data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)
with torch.no_grad():
    probabilities = model(transforms(img).unsqueeze(0)).softmax(dim=1)
top_probabilities, top_class_indices = torch.topk(probabilities * 100, k={topk})
```

### Feature map extraction
```python
model = timm.create_model('hf-hub:{repo_id}', pretrained=True, features_only=True).eval()
print(model.feature_info.channels(), model.feature_info.reduction())
with torch.no_grad():
    for feature_map in model(transforms(img).unsqueeze(0)):
        print(feature_map.shape)
```

### Image embeddings
```python
model = timm.create_model('hf-hub:{repo_id}', pretrained=True, num_classes=0).eval()
with torch.no_grad():
    embedding = model(transforms(img).unsqueeze(0))  # (1, num_features) pooled features
```

`import timm_hrnet` first to use the timm_hrnet implementation; plain timm loads the same weights into its
built-in HRNet."""


@dataclass(frozen=True)
class TaskFacts:
    """What the source publishes about a pose or segmentation checkpoint; results only where it states them."""

    source_title: str | None = None  # who published it, e.g. 'HRNet-Semantic-Segmentation (official release)'
    source_name: str | None = None
    source_url: str | None = None
    source_config: str | None = None  # the official experiment config it was trained / evaluated with
    license: str = 'mit'
    dataset: str | None = None  # what the weights were trained on; None: the label set's dataset, if it has one
    metrics: tuple[tuple[str, float], ...] = ()  # e.g. (('AP', 74.4),), percentages as published
    eval_split: str | None = None  # e.g. 'val2017'
    eval_protocol: str | None = None  # e.g. 'person detector boxes (AP 56.4), flip test'
    results_url: str | None = None  # where the published numbers are
    description: str | None = None


@dataclass(frozen=True)
class _TaskText:
    """What differs between the two task cards."""

    pipeline_tag: str
    task_name: str
    model_type: str
    code: str  # the official code's name
    code_url: str
    paper: str
    citation: str


_TASK_TEXT = {
    'pose': _TaskText(
        'keypoint-detection', 'Keypoint Detection', 'Top-down human pose estimation (keypoint heatmaps)', 'pose_hrnet',
        'https://github.com/leoxiaobin/deep-high-resolution-net.pytorch',
        '[Deep High-Resolution Representation Learning for Human Pose Estimation](https://arxiv.org/abs/1902.09212)',
        POSE_CITATION),
    'segmentation': _TaskText(
        'image-segmentation', 'Image Segmentation', 'Semantic segmentation (HRNetV2)', 'seg_hrnet',
        'https://github.com/HRNet/HRNet-Semantic-Segmentation',
        '[Deep High-Resolution Representation Learning for Visual Recognition](https://arxiv.org/abs/1908.07919)',
        HRNET_CITATION),
}
# HRNet + OCR repos (config.json's head 'ocr'): the HRNet-OCR branch's seg_hrnet_ocr, both papers
_OCR_TEXT = _TaskText(
    'image-segmentation', 'Image Segmentation', 'Semantic segmentation (HRNetV2 + OCR)', 'seg_hrnet_ocr',
    'https://github.com/HRNet/HRNet-Semantic-Segmentation/tree/HRNet-OCR',
    '[Deep High-Resolution Representation Learning for Visual Recognition](https://arxiv.org/abs/1908.07919); '
    '[Object-Contextual Representations for Semantic Segmentation](https://arxiv.org/abs/1909.11065)',
    f'{HRNET_CITATION}\n\n{OCR_CITATION}')


# the model a task repo's weights come from, by the layout config.json records; OpenMMLab's code where it is theirs
_LAYOUT_MODELS = {
    'official': (None, None),
    'mmpose': ("OpenMMLab mmpose's top-down heatmap HRNet", 'https://github.com/open-mmlab/mmpose'),
    'mmseg': ("OpenMMLab mmseg's HRNet + FCNHead, fcn_hr", 'https://github.com/open-mmlab/mmsegmentation'),
}
_MMSEG_OCR_MODEL = "OpenMMLab mmseg's OCRNet (HRNet, FCNHead + OCRHead in a cascade), ocrnet_hr"


def _is_ocr(config: Mapping[str, Any]) -> bool:
    return config.get('head') == 'ocr'


def _seg_numerics(config: Mapping[str, Any], code: str) -> str:
    """Whose numbers an OCR repo's model computes: what its weights do not show and its config.json records."""
    if config['hrnet_spec'].get('upsample_by_stride'):
        return ("mmseg 1.x OCRNet's: exchange units upsample nearest by the stride ratio, then bilinearly to the "
                'exact size; every resize with align_corners False; no biases in the auxiliary and OCR 3x3 convs')
    align = config['align_corners']
    return (f"the official {code}'s: exchange units, the branch concatenation and the final resize bilinear with "
            f'align_corners {align}' + ('; conv biases in the auxiliary and OCR 3x3 convs' if config['head_bias']
                                        else ''))


def _task_results(task: str, facts: TaskFacts) -> list[EvalResult] | None:
    """model-index entries for the metrics the source states; none without a named dataset."""
    if not facts.metrics or facts.dataset is None:
        return None
    url = facts.results_url or facts.source_url
    source = dict(source_name=facts.source_title or 'source', source_url=url) if url else {}
    return [
        EvalResult(
            task_type=_TASK_TEXT[task].pipeline_tag,
            task_name=_TASK_TEXT[task].task_name,
            dataset_type=facts.dataset,
            dataset_name=dataset_title(facts.dataset),
            dataset_split=facts.eval_split,
            metric_type=name,
            metric_name=f'{name} ({facts.eval_protocol})' if facts.eval_protocol else name,
            metric_value=value,
            **source,
        )
        for name, value in facts.metrics
    ]


def _task_results_table(facts: TaskFacts) -> str:
    url = facts.results_url or facts.source_url
    reporter = facts.source_title or 'the publisher of the checkpoint'
    reported = f'[{reporter}]({url})' if url else reporter
    lines = ['| Dataset | Split | Metric | Value | Protocol | Reported by |', '|---|---|---|---|---|---|']
    lines += [f'| {dataset_title(facts.dataset or "")} | {facts.eval_split or "-"} | {name} | {value:g} | '
              f'{facts.eval_protocol or "-"} | {reported} |' for name, value in facts.metrics]
    return '\n'.join(lines)


def _width(spec: Mapping[str, Any]) -> int:
    return spec['stages'][-1]['channels'][0]


def build_task_model_card(
        repo_id: str,
        config: Mapping[str, Any],
        complexity: Complexity,
        facts: TaskFacts,
        source_file: str,
        source_sha256: str,
        verification: str,
) -> ModelCard:
    """The card of a pose or segmentation repo: metadata with ``pipeline_tag`` and, only for results the source
    states on a named dataset, ``model-index``; details, results, usage through timm_hrnet, citation.

    ``config`` is the repo's config.json; ``verification`` says how the staged weights were checked.
    """
    task = config['task']
    ocr = task == 'segmentation' and _is_ocr(config)
    text = _OCR_TEXT if ocr else _TASK_TEXT[task]
    model_name = repo_id.split('/')[-1]
    results = _task_results(task, facts)
    card_data = ModelCardData(
        library_name='timm_hrnet',
        pipeline_tag=text.pipeline_tag,
        license=facts.license,
        tags=[text.pipeline_tag, 'human-pose-estimation' if task == 'pose' else 'semantic-segmentation', 'hrnet',
              'timm_hrnet'],
        datasets=[facts.dataset] if facts.dataset else None,
        metrics=sorted({name for name, _ in facts.metrics}) if results else None,
        model_name=model_name,
        eval_results=results,
    )
    layout = config.get('source_layout', 'official')
    model_text, layout_code_url = _LAYOUT_MODELS[layout]
    if ocr and layout == 'mmseg':
        model_text = _MMSEG_OCR_MODEL
    model_text = model_text or f'the official {text.code}'
    source = facts.source_title or (f'a checkpoint in the official {text.code} layout' if layout == 'official'
                                    else f'a checkpoint in the {layout} layout')
    source_link = f'[{source_file}]({facts.source_url})' if facts.source_url else f'`{source_file}`'
    height, width = complexity.input_size[1:]
    mean, std = tuple(config['mean']), tuple(config['std'])
    if task == 'pose':
        outputs = config['num_joints']
        labels = f"{outputs} joints ({dataset_title(config['keypoints'])} keypoints)" if config['keypoints'] \
            else f'{outputs} joints'
        rows = [
            ('Input', f'person crops of {height} x {width} (box widened to {width}:{height}, enlarged by 1.25, '
                      'affine crop)'),
            ('Output', f'{outputs} heatmaps at stride {config["heatmap_stride"]} ({height // 4} x {width // 4})'),
            ('Keypoints', labels),
            *_keypoint_set_rows(config.get('keypoint_set')),
            ('Preprocessing', f'RGB in [0, 1], normalize mean {mean} std {std}; flip test averages the mirrored crop'),
        ]
        what = (f'An HRNet top-down human pose estimation model ({model_text}) predicting {labels} from '
                f'{height}x{width} person crops')
    else:
        outputs = config['num_classes']
        labels = f"{outputs} classes ({dataset_title(config['dataset'])})" if config['dataset'] in _DATASET_TITLES \
            else f'{outputs} classes'  # a checkpoint's own label set has no dataset name
        rows = [
            ('Input', 'images of any size of at least 32 x 32'),
            ('Output', f'logits for {outputs} classes at stride {config["output_stride"]} (H/4 x W/4)'),
            ('Classes', labels),
            *([('Class names', ', '.join(f'`{name}`' for name in config['class_names']))]
              if _own_label_set(config) else []),
            ('Preprocessing', f'RGB in [0, 1], normalize mean {mean} std {std}'),
            ('align_corners', f'{config["align_corners"]} (bilinear upsampling, as in training)'),
            *([('Numerics', _seg_numerics(config, text.code)),
               ('OCR head', f'mid / key channels {config["ocr_channels"][0]} / {config["ocr_channels"][1]}; '
                            '`model(x, aux=True)` also returns the auxiliary logits')] if ocr else []),
        ]
        what = (f'An HRNetV2 {"+ OCR " if ocr else ""}semantic segmentation model ({model_text}) predicting '
                f'{labels}')
    rows = [
        ('Model type', text.model_type),
        ('Architecture', f'`{config["architecture"]}`, HRNet-W{_width(config["hrnet_spec"])}'),
        ('Params (M)', f'{complexity.params / 1e6:.2f}'),
        ('GMACs', f'{complexity.macs / 1e9:.2f} (at {height}x{width})'),
        *rows,
        ('Dataset', dataset_title(facts.dataset) if facts.dataset else 'not stated'),
        ('Paper', text.paper),
        ('Original code', text.code_url),
        *([('Source code', layout_code_url)] if layout_code_url else []),
        ('Source', source + (f', `{facts.source_name}`' if facts.source_name else '')),
        ('Source checkpoint', f'{source_link} (sha256 `{source_sha256}`)'),
        *([('Source config', facts.source_config)] if facts.source_config else []),
        ('License', facts.license),
    ]
    description = facts.description or (
        f'{what}. The weights come from {source}' + (f' (`{facts.source_name}`)' if facts.source_name else '')
        + ", stored with the official keys as float32 safetensors by timm_hrnet's `hub_upload`."
    )
    sections = [f'# Model card for {model_name}', f'{description} {verification}', '## Model Details',
                _details_table(rows)]
    if results:
        sections += ['## Results', _task_results_table(facts)]
    usage = _pose_usage(repo_id, config) if task == 'pose' else _seg_usage(repo_id, config)
    sections += ['## Model Usage', usage, '## Citation', f'```bibtex\n{text.citation}\n```']
    content = f'---\n{card_data.to_yaml()}\n---\n\n' + '\n\n'.join(sections) + '\n'
    return ModelCard(content)


def _own_label_set(config: Mapping[str, Any]) -> bool:
    """A segmentation repo whose classes are its own (a training run's), not a released dataset's."""
    return 'palette' in config or config.get('dataset') not in (None, 'checkpoint', *_DATASET_TITLES)


def _keypoint_set_rows(keypoint_set: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Card rows spelling out a keypoint set that is no built-in one (config.json's ``keypoint_set``)."""
    if not keypoint_set:
        return []
    names = keypoint_set['keypoints']
    rows = [('Keypoint names', ', '.join(f'`{name}`' for name in names))]
    if keypoint_set.get('flip_pairs'):
        rows.append(('Flip pairs', ', '.join(f'`{names[a]}` / `{names[b]}`' for a, b in keypoint_set['flip_pairs'])))
    if keypoint_set.get('sigmas'):
        rows.append(('OKS sigmas', ', '.join(f'{sigma:g}' for sigma in keypoint_set['sigmas'])))
    return rows


def _load_trained_lines(repo_id: str, what: str, function: str) -> str:
    """How to build a model with the label set config.json spells out: the training package's loader on the
    downloaded weights and config.json."""
    return f"""This model's {what} are in config.json; `{function}` reads them with the weights:

```python
from huggingface_hub import snapshot_download

from timm_hrnet.tasks.training import {function}

model = {function}(snapshot_download('{repo_id}', allow_patterns=['model.safetensors', 'config.json']))
```"""


def _download_lines(repo_id: str, with_config: bool = False) -> tuple[str, str, str]:
    """The Python and shell ways to get the weights (timm_hrnet builds the model from the file), and the local file;
    `with_config`: the shell way fetches config.json beside the weights, where the command line reads what the
    weights do not show (the pose codec, mmseg's resizes)."""
    folder = repo_id.split('/')[-1]
    files = 'model.safetensors config.json' if with_config else 'model.safetensors'
    return (f"weights = hf_hub_download('{repo_id}', 'model.safetensors')",
            f'hf download {repo_id} {files} --local-dir {folder}', f'{folder}/model.safetensors')


def _pose_usage(repo_id: str, config: Mapping[str, Any]) -> str:
    codec = config.get('codec', 'official')
    python_download, shell_download, local = _download_lines(repo_id, with_config=codec != 'official')
    channels, height, width = config['input_size']
    joints = config['num_joints']
    heatmaps = f'(N, {joints}, {height // 4}, {width // 4}) for (N, {channels}, {height}, {width}) normalised crops'
    arguments = f'input_size=({height}, {width})'
    note = ''
    if codec != 'official':  # the weights alone decode by the official rule
        arguments += f", codec='{codec}'"
        note = (f" Nor is the heatmap codec: {codec} crops and decodes by its own rule, which "
                f"`codec='{codec}'` follows (config.json's `codec`); `timm-hrnet pose` reads it from the "
                'config.json downloaded beside the weights.')
    keypoint_set = config.get('keypoint_set')
    if keypoint_set:
        what = 'names, flip pairs, OKS sigmas' if keypoint_set.get('sigmas') else 'names, flip pairs'
        note += '\n\n' + _load_trained_lines(repo_id, f'input size and keypoint set ({what})', 'load_pose_model')
    return f"""```python
from huggingface_hub import hf_hub_download

import timm_hrnet

{python_download}
model = timm_hrnet.create_pose_model(weights, {arguments})   # eval mode
result = model.predict('people.jpg', boxes=[[x, y, w, h]])   # person boxes in pixels; default: the whole image
result['keypoints'], result['scores']      # (P, {joints}, 2) image pixels, (P, {joints})
heatmaps = model(crops)                    # {heatmaps}
```

Command line (`timm-hrnet`, installed with timm_hrnet):

```bash
{shell_download}
timm-hrnet pose people.jpg --checkpoint {local} --input-size {height}x{width} --out pose.png
```

The input size is not stored in the weights: pass `input_size=({height}, {width})` (config.json's
`input_size`).{note}"""


def _seg_model_lines(align: bool, resizes: str) -> tuple[tuple[str, str], str]:
    """The imports (standard library, timm_hrnet) and the lines that build the model as config.json describes it.

    The weights carry the official keys; mmseg's resizes (its exchange units upsample by the stride ratio first,
    also kept by a model fine-tuned from an mmseg checkpoint) are not visible in them, so the architecture is read
    with the layout that computes them."""
    if resizes == 'official':
        return ('', ''), f'model = timm_hrnet.create_seg_model(weights, align_corners={align})   # eval mode'
    imports = ('from dataclasses import replace\n\n',
               '\nfrom timm_hrnet.checkpoints import read_architecture, read_checkpoint')
    return imports, f"""checkpoint = read_checkpoint(weights)   # official keys; {resizes}'s resizes: its layout
architecture = read_architecture(checkpoint.state_dict, 'segmentation', layout='{resizes}')
checkpoint = replace(checkpoint, architecture=architecture)
model = timm_hrnet.create_seg_model(checkpoint)   # eval mode, align_corners={align} as in {resizes}"""


def _seg_usage(repo_id: str, config: Mapping[str, Any]) -> str:
    """Usage of a segmentation repo; how its exchange units resize is config.json's ``hrnet_spec`` (mmseg's two steps
    for an mmseg checkpoint and for a model fine-tuned from one), not its ``source_layout``."""
    resizes = 'mmseg' if config['hrnet_spec'].get('upsample_by_stride') else 'official'
    python_download, shell_download, local = _download_lines(repo_id, with_config=resizes != 'official')
    align = config['align_corners']
    classes = config['num_classes']
    (stdlib, ours), build = _seg_model_lines(align, resizes)
    own = ''
    if _own_label_set(config):
        own = '\n\n' + _load_trained_lines(repo_id, '`align_corners`, class names, palette and class flip pairs',
                                            'load_seg_model')
    note = '' if resizes == 'official' else (
        f'\n\n`create_seg_model(weights, align_corners={align})` on the weights alone builds the official exchange '
        f"units, which give {resizes}'s numbers at input sizes that are multiples of 32 and slightly different ones "
        'elsewhere; `timm-hrnet segment` reads the resizes from the config.json downloaded beside the weights.')
    if resizes != 'official' and _is_ocr(config):
        note = ("\n\nOn the weights alone `create_seg_model` refuses this OCR model: its bias-free head marks it as "
                "mmseg's, whose resizes the weights do not show; `timm-hrnet segment` reads them from the "
                'config.json downloaded beside the weights.')
    return f"""```python
{stdlib}from huggingface_hub import hf_hub_download

import timm_hrnet{ours}

{python_download}
{build}
result = model.predict('street.png', flip=True)   # also scales=(0.75, 1.0, 1.25), window=(512, 1024)
result['labels']                           # (H, W) class indices at the image's size; model.class_names
logits = model(images)                     # (N, {classes}, H/4, W/4) for (N, 3, H, W) normalised images
```

Command line (`timm-hrnet`, installed with timm_hrnet):

```bash
{shell_download}
timm-hrnet segment street.png --checkpoint {local} --align-corners {str(align).lower()} --out seg.png
```

`align_corners` is not stored in the weights but changes every output: pass `align_corners={align}` (config.json's
`align_corners`, the training config's `MODEL.ALIGN_CORNERS`).{note}{own}"""
