"""Serving a detector over HTTP with dynamic batching, Prometheus metrics and a web page.

``openglip serve --weights model.safetensors`` runs it; in Python::

    from openglip.serve import ServeSettings, create_app, run_server
    app = create_app(openglip.load_model("model.safetensors"), ServeSettings(max_batch=8, max_wait_ms=10))
    run_server(app, port=8000)
"""

from .app import ServeSettings, create_app, run_server
from .batching import BatchWorker, Finished, Job
from .inputs import ServeError

__all__ = ["BatchWorker", "Finished", "Job", "ServeError", "ServeSettings", "create_app", "run_server"]
