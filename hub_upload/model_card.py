"""Model cards (README.md) for converted HRNet weights, built with huggingface_hub's ModelCard / ModelCardData."""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ['CardFacts', 'Complexity', 'HRNET_CITATION', 'IMAGENET_1K', 'Verification', 'build_model_card',
           'dataset_title', 'source_title']

OFFICIAL_CODE_URL = 'https://github.com/HRNet/HRNet-Image-Classification'
HRNET_CITATION = """@article{WangSCJDZLMTWLX19,
  title={Deep High-Resolution Representation Learning for Visual Recognition},
  author={Jingdong Wang and Ke Sun and Tianheng Cheng and Borui Jiang and Chaorui Deng and Yang Zhao and Dong Liu
          and Yadong Mu and Mingkui Tan and Xinggang Wang and Wenyu Liu and Bin Xiao},
  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year={2019}
}"""
IMAGENET_1K = 'imagenet-1k'
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
    """Parameters and multiply-accumulates of one image (``timm_hrnet.model_table.count_params_and_macs``)."""

    params: int
    macs: int
    input_size: tuple[int, int, int]


def source_title(facts: CardFacts) -> str:
    """Who the weights come from: the publisher a manifest names, else only what the layout tells."""
    return facts.source_title or _LAYOUT_TITLES.get(facts.source, f'a checkpoint in the {facts.source} layout')


def dataset_title(dataset: str) -> str:
    return 'ImageNet-1k' if dataset == IMAGENET_1K else dataset


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
