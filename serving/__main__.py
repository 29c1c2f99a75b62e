"""``python -m serving [uvicorn options]``: the service under uvicorn, as ``scripts/serve``
runs it, on ``HOST``:``PORT`` (127.0.0.1:8000 unless set); options given here win over the
defaults (``serving.uvicorn_options``)."""

from __future__ import annotations

import sys

from uvicorn.main import main as uvicorn

from app.settings import Settings, SettingsError
from serving import uvicorn_options


def main(argv: list[str]) -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        sys.exit(f"python -m serving: {error}")
    uvicorn.main(
        args=[
            "--factory",
            "app.main:create_app_from_env",
            "--host",
            settings.host,
            "--port",
            str(settings.port),
            *uvicorn_options(settings),
            *argv,
        ],
        prog_name="python -m serving",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
