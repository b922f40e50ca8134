"""Past one machine: batches, evaluations and optimizer trials on a Ray cluster.

Nothing here is imported by ``import rhizome``; the public door is
:mod:`rhizome.scale`, and Ray itself is imported only when a function that
needs it is called (``pip install "rhizome[ray]"``).

Modules:

- ``ray_import``: the one place Ray is imported, with the error naming the extra.
- ``spec``: what travels to a worker: the program (factory + saved parameters
  JSON) and the LM's configuration, never a live LM object or its key.
- ``gate``: the cluster-wide cap on one endpoint (an actor all workers share)
  and the ledger of finished examples that keeps a retried batch from redoing them.
- ``worker``: the Ray Data actor that rebuilds the graph and runs a batch of
  examples through the engine's own async batch.
- ``runner``: the driver: sources, resume through the batch journal, output files.
- ``executor``: the same actor pool behind ``Evaluate`` and optimizers.
"""

__all__ = ()
