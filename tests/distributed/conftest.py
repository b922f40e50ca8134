"""A real local Ray cluster for the distributed tests, shared by all of them (package scope).

A head node with no CPUs (so no work lands on it) and two one-CPU worker
nodes, each a separate raylet with its own worker processes, a small object
store and no dashboard. The loopback test server runs in a thread of the test
process; Ray's worker processes reach it by its 127.0.0.1 URL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.server import OpenAIServer

STORE = 80 * 1024**2


class LocalCluster:
    """The cluster and its worker nodes (tests may remove and add nodes)."""

    def __init__(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "object_store_memory": STORE,
                "include_dashboard": False,
            },
        )
        self.workers = [self.add() for _ in range(2)]
        ray.init(address=self.cluster.address, log_to_driver=False)

    def add(self) -> Any:
        return self.cluster.add_node(num_cpus=1, object_store_memory=STORE)

    def remove_a_worker_node(self) -> None:
        """Kill a worker node's raylet and processes (not the one the driver is attached to).

        All nodes share 127.0.0.1-like addresses here, so the driver may sit on a
        worker node; removing that one would end the test's own Ray session.
        """
        import ray

        driver = ray.get_runtime_context().get_node_id()
        victim = next(node for node in self.workers if node.node_id != driver)
        self.workers.remove(victim)
        self.cluster.remove_node(victim)
        self.workers.append(self.add())  # later tests keep two worker nodes

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[LocalCluster]:
    with pytest.MonkeyPatch.context() as patch:
        # No usage statistics: Ray Data would poll a Prometheus on localhost:9090 from a
        # background thread for them, which only adds noise (and load) to a test run.
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.setenv("RAY_DATA_USAGE_DISABLED", "1")
        cluster = LocalCluster()
        yield cluster
        cluster.shutdown()


def answer_for(body: dict[str, Any]) -> str:
    """A reply that depends only on the question in the prompt: ``{"answer": "A-q7"}``."""
    text = " ".join(str(m.get("content") or "") for m in body["messages"])
    found = re.findall(r"\bq\d+\b", text)
    return json.dumps({"answer": "A-" + (found[-1] if found else "?")})


@pytest.fixture(scope="module")
def ray_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        running.responder = answer_for
        yield running
