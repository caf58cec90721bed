"""OpenVINO compiles leave the thread's alternate signal stack as it was (`export.compile_openvino`,
`signal_stack.keep_signal_stack`): compiled with `compile_model` directly and freed first-in, first-out, two models
leave it pointing at unmapped memory, and the next signal Python handles kills the process with SIGSEGV (as it did
to this suite's xdist workers on a subprocess's SIGCHLD). Run in a subprocess: the direct compiles are the damage."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from timm_hrnet.signal_stack import current_signal_stack, keep_signal_stack

pytest.importorskip('openvino')
pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='alternate signal stacks: Linux only')

_SCRIPT = textwrap.dedent("""
    import faulthandler, json, os, signal, sys, tempfile
    import openvino, timm
    import timm_hrnet
    from timm_hrnet.export import compile_openvino, export
    from timm_hrnet.signal_stack import current_signal_stack

    faulthandler.enable()  # as pytest does: the main thread gets an alternate stack of its own

    def mapped(address):
        for line in open('/proc/self/maps'):
            start, end = (int(part, 16) for part in line.split()[0].split('-'))
            if start <= address < end:
                return True
        return False

    work = tempfile.mkdtemp()
    model = timm.create_model('hrnet_w18_small', num_classes=4).eval()
    path = export(model, os.path.join(work, 'm.xml'), 'openvino', input_size=(64, 64), dynamic=False,
                  check=False).path
    result = {'original': current_signal_stack()}
    first, second = compile_openvino(path), compile_openvino(path)
    result['guarded_while_compiled'] = current_signal_stack()
    del first, second  # first-in, first-out
    result['guarded_after_free'] = current_signal_stack()
    handled = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(signum))
    os.kill(os.getpid(), signal.SIGUSR1)  # a handled signal runs on the thread's alternate stack
    result['signal_handled'] = handled == [signal.SIGUSR1]
    first = openvino.Core().compile_model(str(path), 'CPU')
    result['direct_while_compiled'] = current_signal_stack()
    second = openvino.Core().compile_model(str(path), 'CPU')
    del first, second
    result['direct_after_free'] = current_signal_stack()
    result['direct_after_free_mapped'] = mapped(result['direct_after_free'][0])
    print(json.dumps(result))
""")


def test_compiles_keep_the_threads_signal_stack_where_direct_compiles_leave_it_unmapped() -> None:
    process = subprocess.run([sys.executable, '-c', _SCRIPT], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    original = result['original']
    assert original[1] > 0  # faulthandler's stack
    assert result['guarded_while_compiled'] == result['guarded_after_free'] == original
    assert result['signal_handled']
    # OpenVINO 2026.4 (the tested pin): a direct compile swaps in a stack of its own, and freeing two compiled
    # models in the order they were made leaves the thread on the first one's, already unmapped
    assert result['direct_while_compiled'] != original
    assert result['direct_after_free'] != original and not result['direct_after_free_mapped']


def test_keep_signal_stack_restores_a_stack_changed_inside_it() -> None:
    import ctypes
    before = current_signal_stack()
    replacement = ctypes.create_string_buffer(65536)
    stack = (ctypes.c_void_p * 3)()  # stack_t: pointer, int flags (padded), size
    stack[0], stack[1], stack[2] = ctypes.addressof(replacement), 0, 65536
    with keep_signal_stack():
        assert ctypes.CDLL(None).sigaltstack(ctypes.byref(stack), None) == 0
        assert current_signal_stack() == (ctypes.addressof(replacement), 65536, 0)
    assert current_signal_stack() == before
