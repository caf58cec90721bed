"""Run timm's own model test suite on the HRNet models, with timm_hrnet's models in place of the built-in ones.

The test file is taken from the source distribution of the installed timm version (downloaded once into a cache),
never copied into this repository. timm keeps its built-in HRNet out of some tests (TorchScript, FX, feature
getters) through exclusion lists; those entries are removed, so our models face every test timm runs on any model.
Tests that need the Hugging Face Hub are deselected by name (see HUB_TESTS).

    python tests/timm_suite/run_timm_model_tests.py             # ours (timm_hrnet imported first)
    python tests/timm_suite/run_timm_model_tests.py --builtin   # timm's built-in HRNet, same selection
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE.parents[1] / '.timm-suite'

# exclusion lists that keep timm's built-in HRNet out of tests; hrnet patterns are taken out of these
EXCLUSION_LISTS = ('EXCLUDE_JIT_FILTERS', 'EXCLUDE_FX_FILTERS', 'EXCLUDE_FX_JIT_FILTERS', 'EXCLUDE_FEAT_FILTERS')
# module filter of the forward_intermediates / prune tests; hrnet is put in where a timm version lacks it
FEATURE_MODULES_LIST = 'FEAT_INTER_FILTERS'
# these download weights and test images from the Hub, which tests never reach
HUB_TESTS = ('test_model_inference', 'test_model_load_pretrained', 'test_model_features_pretrained')
HRNET_NAMES = ('hrnet_w18_small', 'hrnet_w18_small_v2', 'hrnet_w18', 'hrnet_w64', 'hrnet_w48_ssld')


def fetch_test_file(version: str, cache: Path) -> Path:
    """timm's tests/test_models.py from the sdist of `version`, downloaded into `cache` on first use."""
    sdist_dir = cache / 'sdist'
    sdists = list(sdist_dir.glob(f'timm-{version}.tar.gz'))
    if not sdists:
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
             f'timm=={version}', '-d', str(sdist_dir)],
            check=True,
        )
        sdists = list(sdist_dir.glob(f'timm-{version}.tar.gz'))
    if not sdists:
        raise SystemExit(f'no source distribution of timm {version} in {sdist_dir}')
    with tarfile.open(sdists[0]) as tar:
        member = tar.getmember(f'timm-{version}/tests/test_models.py')
        source = tar.extractfile(member)
        assert source is not None
        return _write(cache / f'timm-{version}' / 'test_models.orig.py', source.read().decode())


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _hrnet_pattern(pattern: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for name in HRNET_NAMES)


def include_hrnet(source: str) -> tuple[str, list[str]]:
    """Take hrnet patterns out of the exclusion lists and make sure hrnet is in the feature-module list.

    Edits are made on the source text at the positions the AST gives, so the rest of the file stays as timm wrote it.
    """
    tree = ast.parse(source)
    removals: list[tuple[int, int, int, int]] = []
    changes: list[str] = []
    feature_list: ast.List | None = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            lists = [n for n in ast.walk(node.value) if isinstance(n, ast.List)]
            if names & set(EXCLUSION_LISTS):
                for lst in lists:
                    for elt in lst.elts:
                        if isinstance(elt, ast.Constant) and isinstance(elt.value, str) and _hrnet_pattern(elt.value):
                            removals.append((elt.lineno, elt.col_offset, elt.end_lineno, elt.end_col_offset))
                            changes.append(f'removed {elt.value!r} from {"/".join(sorted(names))}')
            if FEATURE_MODULES_LIST in names and isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
                feature_list = node.value
    lines = source.splitlines(keepends=True)
    for lineno, col, end_lineno, end_col in sorted(removals, reverse=True):
        assert lineno == end_lineno, 'a multi-line string pattern'
        line = lines[lineno - 1]
        rest = line[end_col:]
        stripped = rest.lstrip()
        if stripped.startswith(','):
            rest = stripped[1:].lstrip(' ')
        lines[lineno - 1] = line[:col] + rest
    if feature_list is None:
        raise SystemExit(f'{FEATURE_MODULES_LIST} not found in timm\'s test_models.py: the suite changed shape')
    if not any(isinstance(e, ast.Constant) and e.value == 'hrnet' for e in feature_list.elts):
        line = lines[feature_list.lineno - 1]
        col = feature_list.col_offset + 1
        lines[feature_list.lineno - 1] = line[:col] + "'hrnet', " + line[col:]
        changes.append(f"added 'hrnet' to {FEATURE_MODULES_LIST}")
    return ''.join(lines), changes


PYTEST_INI = """[pytest]
addopts = -ra -p no:cacheprovider
markers =
    base: timm marker
    forward: timm marker
    backward: timm marker
    cfg: timm marker
    cfg_nonstd: timm marker
    torchscript: timm marker
    features: timm marker
    fxforward: timm marker
    fxbackward: timm marker
    timeout(seconds): timm marker (pytest-timeout is not required)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--builtin', action='store_true',
                        help="run timm's built-in HRNet instead of timm_hrnet's (for comparison)")
    parser.add_argument('--cache', type=Path, default=DEFAULT_CACHE, help='where the timm sdist is kept')
    parser.add_argument('pytest_args', nargs='*', help='extra pytest arguments (after --)')
    args = parser.parse_args(argv)

    version = importlib.metadata.version('timm')
    original = fetch_test_file(version, args.cache)
    patched, changes = include_hrnet(original.read_text())
    work = args.cache / f'timm-{version}' / ('builtin' if args.builtin else 'ours')
    if work.exists():
        shutil.rmtree(work)
    _write(work / 'test_models.py', patched)
    _write(work / 'pytest.ini', PYTEST_INI)
    shutil.copy(HERE / 'suite_conftest.py', work / 'conftest.py')
    print(f'timm {version}: test_models.py from the sdist; ' + ('; '.join(changes) or 'no filter changes'))

    deselect = ' and '.join(f'not {name}' for name in HUB_TESTS)
    env = dict(os.environ, HF_HUB_OFFLINE='1', TIMM_SUITE_BUILTIN='1' if args.builtin else '0')
    cmd = [sys.executable, '-m', 'pytest', '-c', str(work / 'pytest.ini'), '--rootdir', str(work),
           str(work / 'test_models.py'), '-k', f'hrnet and {deselect}', *args.pytest_args]
    return subprocess.run(cmd, env=env, cwd=work).returncode


if __name__ == '__main__':
    sys.exit(main())
