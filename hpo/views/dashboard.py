"""``hpo dashboard``: optuna-dashboard on our storage with our artifact store wired in."""

from __future__ import annotations

import logging
import socket

from hpo.errors import HpoError
from hpo.store.storage import check_artifact_folder, open_artifact_store, open_storage
from hpo.store.urls import mask, parse_url, resolve_url

log = logging.getLogger(__name__)


def serve(storage_flag: str | None, artifacts_flag: str | None, host: str, port: int) -> None:
    from optuna_dashboard import run_server

    try:  # before anything is opened or created
        socket.getaddrinfo(host, port)
    except OSError as e:
        raise HpoError(f"--host {host!r} is invalid: {e.strerror or e}; allowed: a local host "
                       "name or address, e.g. 127.0.0.1 or 0.0.0.0") from None
    url = resolve_url(storage_flag)
    parse_url(url)
    check_artifact_folder(artifacts_flag, url)
    storage = open_storage(url, create=False).rdb  # the dashboard reads Optuna's own RDB storage
    store = open_artifact_store(artifacts_flag, url)
    print(f"optuna-dashboard for {mask(url)} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    run_server(storage, host=host, port=port, artifact_store=store)
