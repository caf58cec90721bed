"""The HRNet family as timm models: published sizes, the state-dict contract, equivalence with timm's built-in."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import timm
import timm.models.hrnet as builtin
import torch
from helpers import max_abs_diff, randomize_batchnorm
from timm.models import group_parameters
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import timm_hrnet
from timm_hrnet import VARIANTS, HRNet, HRNetSpec, StageSpec
from timm_hrnet.pretrained_cfgs import WEIGHTS, published_results
from timm_hrnet.variants import resolve_variant

ALL = list(VARIANTS)
SMALL = ['hrnet_w18_small', 'hrnet_w18_small_v2']
HEAD_BIASES = 256 + 512 + 1024 + 2048  # downsamp_modules.{0,1,2}.0.bias + final_layer.0.bias

# The seed's model table (mmpretrain metafile): exact parameter counts (its checkpoints have no head-conv biases)
# and FLOPs at 224x224 as the table counts them (multiply-accumulates of every layer, elementwise ones included).
PUBLISHED = {
    'hrnet_w18': (21_295_164, 4.330), 'hrnet_w30': (37_708_380, 8.168), 'hrnet_w32': (41_228_840, 8.986),
    'hrnet_w40': (57_553_320, 12.768), 'hrnet_w44': (67_061_144, 14.964), 'hrnet_w48': (77_466_024, 17.364),
    'hrnet_w64': (128_056_104, 29.002), 'hrnet_w18_ssld': (21_295_164, 4.330), 'hrnet_w48_ssld': (77_466_024, 17.364),
}
# The official repository publishes the small models in millions at one decimal, and GFLOPs counted the same way.
PUBLISHED_SMALL = {'hrnet_w18_small': 13.2, 'hrnet_w18_small_v2': 15.6}


def meta_model(name: str, **kwargs) -> HRNet:
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gmacs(model: torch.nn.Module, size: int = 224) -> float:
    """Conv/linear multiply-accumulates (torch.utils.flop_counter counts 2 FLOPs per MAC)."""
    with torch.device('meta'), FlopCounterMode(display=False) as counter:
        model.eval()(torch.empty(1, 3, size, size))
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize('name', ALL)
def test_parameter_count_matches_published_table(name: str) -> None:
    model = meta_model(name)
    count = num_params(model)
    if name in PUBLISHED_SMALL:
        assert round(count / 1e6, 1) == PUBLISHED_SMALL[name]
        return
    has_bias = VARIANTS[name].head_conv_bias
    assert model.final_layer[0].bias is not None if has_bias else model.final_layer[0].bias is None
    # our canonical layout keeps the head convs' biases (timm's hub weights have them); the table's checkpoints do not
    assert count - (HEAD_BIASES if has_bias else 0) == PUBLISHED[name][0]
    assert round(count / 1e6, 2) == round(PUBLISHED[name][0] / 1e6, 2) or name == 'hrnet_w40'  # 57.56 vs 57.55


@pytest.mark.parametrize('name', list(PUBLISHED))
def test_flops_within_two_percent_of_published_table(name: str) -> None:
    measured = gmacs(meta_model(name))
    assert abs(measured - PUBLISHED[name][1]) / PUBLISHED[name][1] < 0.02, measured
    assert measured < PUBLISHED[name][1]  # the table also counts BN, ReLU, additions and upsampling


def test_flops_of_w18_convention() -> None:
    assert round(gmacs(meta_model('hrnet_w18')), 2) == 4.28


@pytest.mark.parametrize('name', ALL)
def test_state_dict_keys_and_shapes_equal_builtin(name: str) -> None:
    ours = meta_model(name).state_dict()
    with torch.device('meta'):
        theirs = getattr(builtin, name)().state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize('name', ALL)
def test_eval_logits_equal_builtin(name: str) -> None:
    reference = randomize_batchnorm(getattr(builtin, name)()).eval()
    ours = timm.create_model(name).eval()
    ours.load_state_dict(reference.state_dict())
    with torch.no_grad():
        for shape in [(1, 3, 224, 224), (1, 3, 256, 320)]:
            x = torch.randn(shape)
            assert torch.equal(ours(x), reference(x)), max_abs_diff(ours(x), reference(x))


@pytest.mark.parametrize('name', ALL)
def test_train_mode_outputs_gradients_and_statistics_equal_builtin(name: str) -> None:
    reference = randomize_batchnorm(getattr(builtin, name)()).train()
    ours = timm.create_model(name).train()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 128, 160) if name in SMALL else torch.randn(2, 3, 64, 96)
    out_ours, out_ref = ours(x), reference(x)
    assert torch.equal(out_ours, out_ref)
    out_ours.square().sum().backward()
    out_ref.square().sum().backward()
    ref_params = dict(reference.named_parameters())
    for key, param in ours.named_parameters():
        assert max_abs_diff(param.grad, ref_params[key].grad) <= 1e-5, key  # backward may sum in another order
    ref_state = reference.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_state[key]), key


def without_temp_names(text: str) -> str:
    return re.sub(r'tmp\w+', 'tmp', text)


def test_import_replaces_builtin_registration_without_warnings() -> None:
    code = (
        'import timm, timm_hrnet\n'
        'assert type(timm.create_model("hrnet_w18_small")).__module__ == "timm_hrnet.hrnet"\n'
        'print(sorted(timm.list_pretrained("hrnet*")))\n'
    )
    result = subprocess.run([sys.executable, '-W', 'always', '-c', code], capture_output=True, text=True, check=True)
    # whatever `import timm` itself prints (torch 2.6 warns about a temporary directory) is not ours
    baseline = subprocess.run([sys.executable, '-W', 'always', '-c', 'import timm'], capture_output=True, text=True,
                              check=True)
    assert without_temp_names(result.stderr) == without_temp_names(baseline.stderr)
    assert result.stdout.strip() == str(sorted(WEIGHTS))


def test_registry_lists_our_models_and_pretrained_tags() -> None:
    assert timm.list_models('hrnet*') == sorted(VARIANTS)
    assert timm.list_pretrained('hrnet*') == sorted(WEIGHTS)
    assert set(timm.list_models(module='hrnet')) == set(VARIANTS)
    for name in VARIANTS:
        assert isinstance(meta_model(name), HRNet)


@pytest.mark.parametrize('name', ALL)
def test_pretrained_cfg_carries_preprocessing_license_and_results(name: str) -> None:
    cfg = meta_model(name).pretrained_cfg
    default_tag = next(k for k in WEIGHTS if k.split('.')[0] == name)
    assert cfg['hf_hub_id'] == f'timm/{default_tag}'
    assert cfg['tag'] == default_tag.split('.', 1)[1]
    for key in ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'license'):
        assert cfg[key] is not None, key
    assert cfg['first_conv'] == 'conv1' and cfg['classifier'] == 'classifier'
    assert published_results(name) == published_results(default_tag)
    assert published_results(name).top1 > 70


def test_ssld_cfg_uses_its_test_size() -> None:
    cfg = timm.models.get_pretrained_cfg('hrnet_w48_ssld.paddle_in1k')
    assert cfg.test_input_size == (3, 288, 288) and cfg.test_crop_pct == 1.0
    assert published_results('hrnet_w48_ssld') == (84.478, 97.234)
    assert published_results('hrnet_w99') is None


def test_generic_model_builds_a_tiny_spec() -> None:
    tiny = HRNetSpec(stem_width=16, stages=(
        StageSpec(1, 'bottleneck', (1,), (8,)),
        StageSpec(1, 'basic', (1, 1), (4, 8)),
        StageSpec(2, 'basic', (1, 1, 1), (4, 8, 16)),
        StageSpec(1, 'basic', (1, 1, 1, 1), (4, 8, 16, 32)),
    ))
    model = HRNet(tiny, num_classes=7).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert len(model.stage3) == 2 and model.conv1.out_channels == 16


def test_bad_specs_and_unknown_variants_are_explained() -> None:
    with pytest.raises(ValueError, match="'basic' or 'bottleneck'"):
        StageSpec(1, 'dense', (1,), (8,))
    with pytest.raises(ValueError, match='differ in length'):
        StageSpec(1, 'basic', (1, 1), (8,))
    with pytest.raises(ValueError, match='Did you mean hrnet_w18'):
        resolve_variant('hrnet_w19')
    assert resolve_variant('hrnet_w32.ms_in1k') is VARIANTS['hrnet_w32']


def test_timm_model_api() -> None:
    model = timm.create_model('hrnet_w18_small').eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 2048, 7, 7)
        assert model.forward_head(features, pre_logits=True).shape == (2, 2048)
        assert torch.equal(model.forward_head(features), model(x))
    assert model.get_classifier() is model.classifier
    model.reset_classifier(10, 'max')
    assert model.get_classifier().out_features == 10 and model.num_classes == 10
    assert model(x).shape == (2, 10)
    model.reset_classifier(0)
    assert model(x).shape == (2, 2048)



def test_group_matcher_covers_every_parameter() -> None:
    model = meta_model('hrnet_w18')
    groups = group_parameters(model, model.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert sum(len(g) for g in coarse.values()) == len(list(model.parameters()))
    assert len(coarse) < len(groups)
    assert groups[0] == ['conv1.weight', 'bn1.weight', 'bn1.bias', 'conv2.weight', 'bn2.weight', 'bn2.bias']


@pytest.mark.parametrize('pool, width', [('avg', 2048), ('max', 2048), ('avgmax', 2048), ('catavgmax', 4096)])
def test_global_pool_types(pool: str, width: int) -> None:
    model = timm.create_model('hrnet_w18_small', global_pool=pool, num_classes=5).eval()
    x = torch.randn(1, 3, 96, 96)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, width)
    assert model(x).shape == (1, 5)


def test_global_pool_none_keeps_the_feature_map() -> None:
    model = timm.create_model('hrnet_w18_small', global_pool='', num_classes=0).eval()
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 2048, 3, 3)


def test_pretrained_weights_load_through_timm_file_overlay(classifier: HRNet, weights_file) -> None:
    state = classifier.state_dict()
    model = timm.create_model('hrnet_w18_small', pretrained=True, pretrained_cfg_overlay=dict(file=str(weights_file)))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize('in_chans', [1, 4])
def test_pretrained_with_other_classes_and_input_channels(classifier: HRNet, weights_file, in_chans: int) -> None:
    state = classifier.state_dict()
    model = timm.create_model(
        'hrnet_w18_small', pretrained=True, pretrained_cfg_overlay=dict(file=str(weights_file)), num_classes=10,
        in_chans=in_chans,
    ).eval()
    assert model.classifier.out_features == 10
    conv = model.conv1.weight
    assert conv.shape == (64, in_chans, 3, 3)
    rgb = state['conv1.weight']
    if in_chans == 1:  # timm's adapt_input_conv: sum over RGB
        torch.testing.assert_close(conv, rgb.sum(dim=1, keepdim=True))
    else:  # repeat RGB and rescale by 3 / in_chans
        torch.testing.assert_close(conv[:, :3], rgb * 3 / 4)
    assert torch.equal(model.layer1[0].conv1.weight, state['layer1.0.conv1.weight'])
    assert model(torch.randn(1, in_chans, 64, 64)).shape == (1, 10)


def forward_retained_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Bytes allocated during one forward and still alive after it: what is kept for backward (saved tensors,
    checkpoint inputs, the selective-checkpointing cache) plus the output. From the profiler's allocation events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        out = model(x)
    events = [e for e in profiler.profiler.kineto_results.events() if e.name() == '[memory]']
    return out, sum(e.nbytes() for e in events)


@pytest.mark.parametrize('selective', [False, True], ids=['full', 'selective'])
def test_gradient_checkpointing_recomputes_with_same_results_and_less_memory(selective: bool) -> None:
    torch.manual_seed(0)
    plain = randomize_batchnorm(timm.create_model('hrnet_w18_small', drop_path_rate=0.1)).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True, selective=selective)
    x = torch.randn(2, 3, 128, 128)
    torch.manual_seed(1)  # the same stochastic-depth draws in both (recomputation replays them)
    out_plain, bytes_plain = forward_retained_bytes(plain, x)
    torch.manual_seed(1)
    out_ckpt, bytes_ckpt = forward_retained_bytes(checkpointed, x)
    assert torch.equal(out_plain, out_ckpt)
    # full: only segment inputs kept (0.33 here); selective: conv outputs kept, BN/ReLU/adds recomputed (0.56)
    assert bytes_ckpt < (0.6 if selective else 0.4) * bytes_plain, (bytes_ckpt, bytes_plain)
    out_plain.square().sum().backward()
    out_ckpt.square().sum().backward()
    ckpt_params = dict(checkpointed.named_parameters())
    for key, param in plain.named_parameters():
        assert torch.equal(ckpt_params[key].grad, param.grad), key  # the same ops on the same values
    # recomputation in backward must not move BatchNorm statistics a second time
    ckpt_state = checkpointed.state_dict()
    for key, value in plain.state_dict().items():
        assert torch.equal(ckpt_state[key], value), key


def test_selective_checkpointing_keeps_convolution_outputs() -> None:
    """Selective keeps more than full checkpointing (the conv outputs) and turns off with enable=False."""
    model = timm.create_model('hrnet_w18_small').train()
    x = torch.randn(2, 3, 128, 128)
    model.set_grad_checkpointing(True)
    _, full = forward_retained_bytes(model, x)
    model.set_grad_checkpointing(True, selective=True)
    _, selective = forward_retained_bytes(model, x)
    assert full < 0.7 * selective
    model.set_grad_checkpointing(False, selective=True)
    assert not model.grad_checkpointing and not model.selective_recompute and not model.stage3.selective_recompute


@pytest.mark.parametrize('size', [(225, 250), (97, 131), (32, 33), (33, 32)])
def test_any_input_size(size: tuple[int, int]) -> None:
    model = timm.create_model('hrnet_w18_small').eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)


def test_builtin_really_fails_on_sizes_we_accept() -> None:
    with pytest.raises(RuntimeError):
        builtin.hrnet_w18_small().eval()(torch.randn(1, 3, 97, 131))


@pytest.mark.parametrize('shape, message', [
    ((1, 3, 31, 64), 'at least 32x32 pixels'),
    ((1, 3, 64, 16), 'at least 32x32 pixels'),
    ((1, 4, 64, 64), 'expects 3 input channels, got 4'),
    ((1, 1, 64, 64), 'expects 3 input channels, got 1'),
    ((3, 64, 64), 'expects a 4-D'),
    ((1, 1, 3, 64, 64), 'expects a 4-D'),
])
def test_bad_inputs_get_clear_errors(shape: tuple[int, ...], message: str) -> None:
    model = timm.create_model('hrnet_w18_small').eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(shape))


def test_single_channel_model_names_its_channels() -> None:
    model = timm.create_model('hrnet_w18_small', in_chans=1).eval()
    with pytest.raises(ValueError, match='expects 1 input channels, got 3'):
        model(torch.randn(1, 3, 64, 64))


def test_package_exports_resolve_to_their_modules() -> None:
    for name in timm_hrnet.__all__:
        obj = getattr(timm_hrnet, name)
        if callable(obj) and hasattr(obj, '__module__'):
            assert obj.__module__.startswith('timm_hrnet.'), name
    assert timm_hrnet.HRNet.__module__ == 'timm_hrnet.hrnet'
    assert timm_hrnet.optimize_for_inference.__module__.startswith('timm_hrnet.fused')


def test_pretrained_cfgs_match_timms_builtin_ones() -> None:
    """Switching between timm's built-in HRNet and ours must not change preprocessing or weights."""
    code = (
        'import json, timm\n'
        'def cfgs(): return {n: timm.models.get_pretrained_cfg(n).to_dict() for n in timm.list_pretrained("hrnet*")}\n'
        'before = cfgs()\n'
        'import timm_hrnet\n'
        'after = cfgs()\n'
        'keys = ("hf_hub_id", "input_size", "test_input_size", "crop_pct", "test_crop_pct", "interpolation",\n'
        '        "mean", "std", "num_classes", "first_conv", "classifier", "license", "pool_size")\n'
        'print(json.dumps({n: [k for k in keys if before[n].get(k) != after[n].get(k)] for n in before}))\n'
    )
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    differences = json.loads(result.stdout)
    assert set(differences) == set(WEIGHTS)
    assert all(not keys for keys in differences.values()), differences
    assert timm.models.get_pretrained_cfg('hrnet_w18').tag == 'ms_aug_in1k'  # same default tags as timm
