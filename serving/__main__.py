"""``python -m serving [uvicorn options]``: the service under uvicorn, as ``scripts/serve``
runs it, on ``HOST``:``PORT`` (127.0.0.1:8000 unless set); options given here win over the
defaults (``serving.uvicorn_options``). With several workers, their metrics are kept in a
directory made for the run (``serving.metrics``)."""

from __future__ import annotations

import sys

from uvicorn.config import Config
from uvicorn.main import main as uvicorn

from app.settings import Settings, SettingsError
from serving import uvicorn_options
from serving.metrics import metrics_directory

FACTORY = "app.main:create_app_from_env"


def main(argv: list[str]) -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        sys.exit(f"python -m serving: {error}")
    args = [
        "--factory",
        FACTORY,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        *uvicorn_options(settings),
        *argv,
    ]
    with metrics_directory(settings, workers(args)):
        uvicorn.main(args=args, prog_name="python -m serving")


def workers(args: list[str]) -> int:
    """How many worker processes uvicorn runs for ``args``, by uvicorn's own rules
    (``--workers``, else ``WEB_CONCURRENCY``, else 1); 1 when it cannot read them (it then
    says why itself)."""
    try:
        context = uvicorn.make_context("python -m serving", list(args), resilient_parsing=True)
        count: int = Config(FACTORY, workers=context.params.get("workers")).workers
    except Exception:
        return 1
    return count


if __name__ == "__main__":
    main(sys.argv[1:])
