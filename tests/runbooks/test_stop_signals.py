"""A stop signal stops a runner or a lab cleanly (KeyboardInterrupt, so rollbacks and clean-ups
run) even when the process was started with SIGINT ignored, as a shell without job control starts
every background command (`peakguard lab up &` in a script, or CI's own background steps)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.infra.conftest import PROJECT_DIR

_WAITER = textwrap.dedent(
    """
    import threading
    from runbooks.engine.run import sigterm_as_interrupt

    with sigterm_as_interrupt():
        print("waiting", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("cleaned up", flush=True)
    """
)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_process_started_with_sigint_ignored_still_stops_cleanly(stop: signal.Signals) -> None:
    waiter = subprocess.Popen([sys.executable, "-c", _WAITER], cwd=PROJECT_DIR, stdout=subprocess.PIPE, text=True,
                              preexec_fn=_ignore_sigint)  # fmt: skip
    assert waiter.stdout is not None
    assert waiter.stdout.readline() == "waiting\n"
    time.sleep(0.2)  # inside the wait, not before the handler is installed

    waiter.send_signal(stop)
    out, _ = waiter.communicate(timeout=30)

    assert out == "cleaned up\n"
    assert waiter.returncode == 0
