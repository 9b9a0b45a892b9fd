"""JupyterHub integration for Wasmspawner.

- :class:`wasmspawner.spawner.WasmSpawner`: the hub-side ``Spawner``
  (``c.JupyterHub.spawner_class = "wasm"``).
- ``wasmspawner-singleuser`` (:mod:`wasmspawner.singleuser`): the in-job
  wrapper that reports the server's port to the host, then execs the server.
"""

__version__ = "0.1.0"
