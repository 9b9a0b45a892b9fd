# JupyterHub with Wasmspawner. Start the host first (wasmspawner serve -c host-local.toml
# or host-slurm.toml), then: jupyterhub -f jupyterhub_config.py
#
# Paths below assume the layout of README's "Use it with JupyterHub"; adjust them.
c = get_config()  # noqa: F821

c.JupyterHub.bind_url = "http://127.0.0.1:8000"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:8081"
# Servers keep running through a hub restart; the host keeps their jobs.
c.JupyterHub.cleanup_servers = False

c.JupyterHub.authenticator_class = "dummy"          # use your site's authenticator
c.Authenticator.allowed_users = {"alice"}
c.JupyterHub.allow_named_servers = True

c.JupyterHub.spawner_class = "wasm"
c.WasmSpawner.host_url = "http://127.0.0.1:8765"
c.WasmSpawner.api_token_file = "/etc/wasmspawner/token"   # same file as the host's http.token_file
c.WasmSpawner.instance = "local"                           # or instances = ["slurm", "local"]
# The in-job wrapper that reports the server's port; it must be on the job's PATH
# (install the wasmspawner package into the environment jobs run in).
c.WasmSpawner.wrapper = ["/opt/jupyter/bin/wasmspawner-singleuser"]
c.Spawner.cmd = ["/opt/jupyter/bin/jupyterhub-singleuser"]
c.Spawner.start_timeout = 300     # queue waits are the host's (lifecycle.queue_timeout_secs)
c.Spawner.http_timeout = 120
