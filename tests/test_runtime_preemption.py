"""Stop requests: real signals set a flag, nothing else happens until the task asks."""
import os
import signal

import pytest

from launcher.exitcodes import STOPPED_FOR_REQUEUE
from launcher.runtime.preemption import DEFAULT_SIGNALS, StopForRequeue, StopRequest


@pytest.fixture
def restore_handlers():
    """Put back the handlers the test replaced, so pytest keeps its own SIGINT handling."""
    saved = {s: signal.getsignal(getattr(signal, s)) for s in DEFAULT_SIGNALS}
    yield
    for name, handler in saved.items():
        signal.signal(getattr(signal, name), handler)


def test_a_real_sigusr2_sets_the_flag_and_names_the_signal(restore_handlers):
    stop = StopRequest().install()
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGUSR2)
    assert stop.requested
    assert stop.signal_name == "SIGUSR2"


def test_sigint_and_sigterm_do_not_interrupt_the_process_once_installed(restore_handlers):
    stop = StopRequest().install()
    os.kill(os.getpid(), signal.SIGINT)       # would raise KeyboardInterrupt without the handler
    os.kill(os.getpid(), signal.SIGTERM)      # would end the process without the handler
    assert stop.requested and stop.signal_name == "SIGINT"


def test_only_the_configured_signals_are_handled(restore_handlers):
    stop = StopRequest(["SIGUSR2"]).install()
    assert signal.getsignal(signal.SIGUSR2) == stop._on_signal
    assert signal.getsignal(signal.SIGTERM) != stop._on_signal


def test_install_accepts_signals_as_names_without_sig_prefix(restore_handlers):
    stop = StopRequest().install(["USR2"])
    assert stop.signals == (signal.SIGUSR2,)


def test_a_stop_requested_by_code_has_no_signal_name():
    stop = StopRequest()
    stop.request()
    assert stop.requested and stop.signal_name is None


def test_stop_for_requeue_carries_the_step_and_exit_code_75():
    stopped = StopForRequeue(1234)
    assert stopped.step == 1234 and stopped.exit_code == STOPPED_FOR_REQUEUE == 75
