"""What timm passes to every model, and the fallbacks for the timm internals we rely on.

timm's own model test suite runs on our models in CI (tests/timm_suite/run_timm_model_tests.py); these tests pin
the same contract in our own suite, with the numbers behind it.
"""
from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from timm.layers import DropPath

from timm_hrnet import HRNet, HRNetSpec, StageSpec
from timm_hrnet.timm_compat import (
    feature_take_indices,
    features_cfg_fallback,
    pretrained_cfg_for_features,
    take_indices_fallback,
)
from timm_hrnet.variants import VARIANTS

SMALL = 'hrnet_w18_small'


def test_hub_is_offline_before_huggingface_hub_reads_it() -> None:
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE


def test_meta_device_builds_without_allocating() -> None:
    model = timm.create_model('hrnet_w64', device='meta')
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.device.type == 'meta' for t in tensors)
    with torch.no_grad():
        assert model(torch.empty(2, 3, 224, 224, device='meta')).shape == (2, 1000)


def test_dtype_and_device_reach_every_tensor() -> None:
    model = timm.create_model(SMALL, dtype=torch.bfloat16, device='cpu', num_classes=7).eval()
    assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {torch.bfloat16}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16
    features = timm.create_model(SMALL, features_only=True, device='meta', dtype=torch.float64)
    assert {t.dtype for t in features.parameters()} == {torch.float64}


def test_unknown_model_argument_is_a_type_error() -> None:
    with pytest.raises(TypeError, match='not_a_model_arg'):
        timm.create_model(SMALL, device='meta', not_a_model_arg=1)


def test_reset_classifier_keeps_device_dtype_and_mode() -> None:
    model = timm.create_model(SMALL).to(torch.bfloat16).eval()
    model.reset_classifier(10)
    assert model.classifier.weight.dtype == torch.bfloat16 and not model.classifier.training
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)).shape == (1, 10)
    model.to(device='meta', dtype=torch.float64).train()
    model.reset_classifier(3, 'max')
    assert model.classifier.weight.device.type == 'meta' and model.classifier.weight.dtype == torch.float64
    assert model.classifier.training and model.global_pool.pool_type == 'max'


def test_drop_path_rate_default_changes_nothing() -> None:
    torch.manual_seed(0)
    plain = timm.create_model(SMALL)
    assert not any(isinstance(m, DropPath) for m in plain.modules())
    torch.manual_seed(0)
    explicit = timm.create_model(SMALL, drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(explicit.train()(x), plain.train()(x), rtol=0, atol=0)


def test_drop_path_is_stochastic_depth_rising_with_depth() -> None:
    model = timm.create_model(SMALL, drop_path_rate=0.2)
    reference = timm.create_model(SMALL)
    assert model.state_dict().keys() == reference.state_dict().keys()  # weights stay interchangeable
    # depth: stage 1's one block, then two blocks in each of the three modules; the first block drops nothing
    rates = sorted({m.drop_prob for m in model.modules() if isinstance(m, DropPath)})
    assert rates == pytest.approx([0.2 * i / 6 for i in range(1, 7)])
    assert not isinstance(model.layer1[0].drop_path, DropPath)
    module = model.stage4[0]  # parallel branches share the rates of their depth; the deepest block gets the full rate
    assert [[block.drop_path.drop_prob for block in branch] for branch in module.branches] == [rates[-2:]] * 4
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)  # identity in eval
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        second = model(x)
    assert not torch.equal(first, second)  # whole residual branches dropped per sample in training
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_drop_path_rate_out_of_range() -> None:
    with pytest.raises(ValueError, match='drop_path_rate'):
        timm.create_model(SMALL, drop_path_rate=1.0, device='meta')


def test_specs_that_cannot_be_built_are_refused() -> None:
    three_stages = HRNetSpec(stages=VARIANTS[SMALL].stages[:3])
    with pytest.raises(ValueError, match='exactly four stages'):
        HRNet(three_stages, device='meta')
    with pytest.raises(ValueError, match='stage i must have i branches'):
        HRNetSpec(stages=(StageSpec(1, 'bottleneck', (1,), (32,)), StageSpec(1, 'basic', (2,), (16,))))
    with pytest.raises(ValueError, match='upsample'):
        HRNetSpec(stages=VARIANTS[SMALL].stages, upsample='bicubic')
    with pytest.raises(ValueError, match='block'):
        StageSpec(1, 'dense', (2,), (16,))


@pytest.mark.parametrize('indices', [None, 1, 3, 5, [0], [1, 3], [-1], [-2, -1], (0, 4)])
def test_take_indices_fallback_matches_timm(indices: object) -> None:
    assert take_indices_fallback(5, indices) == tuple(feature_take_indices(5, indices))


@pytest.mark.parametrize('indices', [0, 6, [5], [-6]])
def test_take_indices_fallback_rejects_what_timm_rejects(indices: object) -> None:
    with pytest.raises((ValueError, AssertionError)):
        feature_take_indices(5, indices)
    with pytest.raises(ValueError):
        take_indices_fallback(5, indices)


def test_features_cfg_fallback_matches_timm() -> None:
    cfg = dict(timm.create_model(SMALL, device='meta').pretrained_cfg)
    assert features_cfg_fallback(cfg) == pretrained_cfg_for_features(cfg)


def test_a_timm_without_our_private_names_still_gives_models() -> None:
    """Simulate a timm release that moved every private name we use: import works, models build and run."""
    script = textwrap.dedent("""
        import warnings
        import types
        import timm, torch
        import timm.models._builder as builder, timm.models._features as features
        for module, name in [(features, 'feature_take_indices'), (features, 'FeatureGetterNet'),
                             (builder, 'pretrained_cfg_for_features')]:
            delattr(module, name)
        timm.models._registry = types.ModuleType('registry_without_tables')  # timm keeps using its own
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import timm_hrnet
        assert any('registry' in str(w.message) for w in caught), [str(w.message) for w in caught]
        import timm_hrnet.timm_compat as compat
        assert compat.feature_take_indices is compat.take_indices_fallback
        model = timm.create_model('hrnet_w18_small').eval()
        assert type(model).__module__ == 'timm_hrnet.hrnet'
        features = timm.create_model('hrnet_w18_small', features_only=True, out_indices=(1, 2))
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
            assert [f.shape[1] for f in features(torch.randn(1, 3, 64, 64))] == [128, 256]
        fused = timm_hrnet.optimize_for_inference(model)
        print('ok')
    """)
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith('ok'), result.stderr[-2000:]


def test_fx_graph_scripts_like_timm_models() -> None:
    """timm's FX-then-TorchScript test: the traced graph's signature must name types TorchScript knows."""
    from timm.models import create_feature_extractor

    model = timm.create_model(SMALL).eval()
    graph = create_feature_extractor(model, return_nodes={'classifier': 'logits'})
    scripted = torch.jit.script(graph)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x)['logits'], model(x))


def test_pruned_copy_trains() -> None:
    model = timm.create_model(SMALL, num_classes=4)
    pruned = copy.deepcopy(model)
    pruned.prune_intermediate_layers([2])
    pruned.reset_classifier(4, 'avg')
    out = pruned(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 4)
    out.sum().backward()
