"""The runbook lock as a Lease, through the real Kubernetes client and the local API."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client  # type: ignore[import-untyped, unused-ignore]

from lab.kube_api import LocalKubernetes
from runbooks.engine.locking import run_of, runner_identity
from runbooks.engine.run import Engine, Outcome
from runbooks.engine.spec import Context
from runbooks.errors import LockHeldError, RunbookError
from runbooks.ports.lease_lock import LEASE_NAME, LeaseLock
from tests.runbooks.conftest import SettableFreeze, World, approved_plan, setter, toy_runbook


@pytest.fixture(scope="module")
def coordination() -> Iterator[Any]:
    with LocalKubernetes() as kubernetes:
        configuration = client.Configuration()
        configuration.host = kubernetes.url
        yield client.CoordinationV1Api(client.ApiClient(configuration))


@pytest.fixture
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


def _lock(api: Any, namespace: str) -> LeaseLock:
    return LeaseLock(api, env="prod", namespace=namespace)


def test_a_second_runner_is_refused_with_who_holds_it_and_since_when(coordination: Any, namespace: str) -> None:
    first = _lock(coordination, namespace).acquire(holder="alice@host-a", ttl=30)

    with pytest.raises(LockHeldError) as refused:
        _lock(coordination, namespace).acquire(holder="bob@host-b", ttl=30)

    assert refused.value.holder == "alice@host-a"
    assert refused.value.since == first.since
    assert "--break-lock" in str(refused.value)
    lease = coordination.read_namespaced_lease(LEASE_NAME, namespace)
    assert lease.spec.holder_identity == "alice@host-a"


def test_an_expired_lease_can_be_taken_and_the_old_holder_learns_it_lost(coordination: Any, namespace: str) -> None:
    alice, bob = _lock(coordination, namespace), _lock(coordination, namespace)
    alice.acquire(holder="alice", ttl=1)
    time.sleep(1.2)

    assert bob.acquire(holder="bob", ttl=30).holder == "bob"
    with pytest.raises(RunbookError, match=r"lock lost.*held by bob"):
        alice.renew()


def test_renewing_keeps_it_past_its_duration(coordination: Any, namespace: str) -> None:
    alice = _lock(coordination, namespace)
    alice.acquire(holder="alice", ttl=1)
    for _ in range(3):
        time.sleep(0.5)
        alice.renew()

    with pytest.raises(LockHeldError):
        _lock(coordination, namespace).acquire(holder="bob", ttl=1)


def test_break_lock_takes_a_live_lease(coordination: Any, namespace: str) -> None:
    _lock(coordination, namespace).acquire(holder="alice", ttl=300)
    assert _lock(coordination, namespace).acquire(holder="bob", ttl=30, force=True).holder == "bob"


def test_release_frees_it_for_the_next_runner_at_once(coordination: Any, namespace: str) -> None:
    alice = _lock(coordination, namespace)
    alice.acquire(holder="alice", ttl=300)
    alice.release()

    assert _lock(coordination, namespace).acquire(holder="bob", ttl=30).holder == "bob"
    alice.release()  # releasing a lock no longer held changes nothing
    assert coordination.read_namespaced_lease(LEASE_NAME, namespace).spec.holder_identity == "bob"


def test_of_two_runners_racing_on_the_same_lease_version_one_wins(coordination: Any, namespace: str) -> None:
    _lock(coordination, namespace).acquire(holder="old", ttl=1)
    time.sleep(1.2)
    stale = coordination.read_namespaced_lease(LEASE_NAME, namespace).metadata.resource_version
    assert _lock(coordination, namespace).acquire(holder="winner", ttl=30).holder == "winner"

    # The loser writes with the version it read before the winner's write: the API refuses it.
    loser = _lock(coordination, namespace)
    with pytest.raises(LockHeldError) as refused:
        loser._replace(stale, {"holderIdentity": "loser", "leaseDurationSeconds": 30}, taking_from="old")
    assert refused.value.holder == "winner"


def test_two_runners_of_the_same_operator_on_one_host_never_both_act(coordination: Any, tmp_path: Path) -> None:
    """The reproduction: the same run started twice at once as `user@host`, through the engine and
    the Lease. 100 races: every time exactly one acts, the other is refused naming the holder, and
    the refused runner's exit leaves the holder's lease alone (it never 'loses' its lock)."""
    for trial in range(100):
        namespace = f"race-{trial}-{uuid.uuid4().hex[:6]}"
        world, acted, refused = _race(coordination, namespace, tmp_path / str(trial))

        assert len(acted) == 1 and len(refused) == 1, f"trial {trial}: {len(acted)} acted, {len(refused)} refused"
        assert acted[0].status == "succeeded", f"trial {trial}: {acted[0].reason}"
        assert run_of(refused[0]) == acted[0].run_id, "the refusal names the runner that holds it"
        assert world.calls("apply", "a") == 1
        assert coordination.read_namespaced_lease(LEASE_NAME, namespace).spec.holder_identity == ""


def _race(coordination: Any, namespace: str, journal_dir: Path) -> tuple[World, list[Outcome], list[str]]:
    """Two runners, same operator, same plan, started together; what each got."""
    world = World({"a": 2, "b": "off"})
    world.before_apply["a"] = lambda _: time.sleep(0.02)  # the other runner tries while this one acts
    start = threading.Barrier(2)
    acted: list[Outcome] = []
    refused: list[str] = []

    def runner() -> None:
        runbook = toy_runbook(setter("a", "a", to=5), setter("b", "b", to="on"))
        context = Context(env="dev", params={}, ports=world)
        lock = _lock(coordination, namespace)
        engine = Engine(runbook=runbook, context=context, journal_dir=journal_dir, lock=lock, freeze=SettableFreeze(),
                        operator="oncall@laptop")  # fmt: skip
        plan = approved_plan(engine)
        start.wait()
        try:
            acted.append(engine.run(*plan))
        except LockHeldError as exc:
            refused.append(exc.holder)

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return world, acted, refused


def test_a_runner_renews_and_releases_only_its_own_lease(coordination: Any, namespace: str) -> None:
    """A runner whose lease was taken over (expired, then taken) neither renews nor clears the new holder's."""
    first = _lock(coordination, namespace)
    first.acquire(holder=runner_identity(operator="oncall@laptop", run_id="run-1"), ttl=1)
    time.sleep(1.2)
    second = _lock(coordination, namespace)
    taker = runner_identity(operator="oncall@laptop", run_id="run-2")
    second.acquire(holder=taker, ttl=30)

    with pytest.raises(RunbookError, match="lock lost"):
        first.renew()
    first.release()

    assert coordination.read_namespaced_lease(LEASE_NAME, namespace).spec.holder_identity == taker
