"""``hpo dashboard``: optuna-dashboard on our storage with our artifact store wired in."""

from __future__ import annotations

import logging

from hpo.storage import mask, open_artifact_store, open_storage, resolve_url

log = logging.getLogger(__name__)


def serve(storage_flag: str | None, artifacts_flag: str | None, host: str, port: int) -> None:
    from optuna_dashboard import run_server

    url = resolve_url(storage_flag)
    storage = open_storage(url, create=False).rdb  # the dashboard reads Optuna's own RDB storage
    store = open_artifact_store(artifacts_flag, url)
    print(f"optuna-dashboard for {mask(url)} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    run_server(storage, host=host, port=port, artifact_store=store)
