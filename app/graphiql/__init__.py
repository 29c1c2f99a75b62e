"""GraphiQL for a browser at GET /graphql, served entirely by this app.

The browser bundles (GraphiQL's prebuilt UMD build and the React 18 it runs on) are not in the
repository: scripts/install-graphiql fetches the versions pinned in package-lock.json beside
this file from the npm registry into ``settings.graphiql_assets_dir``, and ``graphiql_routes``
serves those four files, and nothing else from that folder, under /graphiql/assets/. The page
refers to no other origin, and tells the browser so with a Content-Security-Policy, so it works
on a machine with no internet access. Without the assets the page says how to install them; the
API itself never needs them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import dataclass
from pathlib import Path
from string import Template
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from app.settings import Settings

ASSETS_PATH = "/graphiql/assets"
ENDPOINT = "/graphql"
# Shown in the Headers editor so a person sees where a token goes. The page drops the header
# while it still holds this text: the server would refuse it as a malformed token, and that
# would also fail the schema introspection GraphiQL runs on load.
AUTHORIZATION_HINT = "Bearer <token from scripts/token>"


@dataclass(frozen=True)
class Asset:
    package: str
    path: str  # inside the package's folder
    media_type: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def file(self, assets_dir: Path) -> Path:
        return assets_dir / self.package / self.path


_JS = "text/javascript; charset=utf-8"
ASSETS = {
    asset.name: asset
    for asset in (
        Asset("react", "umd/react.production.min.js", _JS),
        Asset("react-dom", "umd/react-dom.production.min.js", _JS),
        Asset("graphiql", "graphiql.min.js", _JS),
        Asset("graphiql", "graphiql.min.css", "text/css; charset=utf-8"),
    )
}

# What the editor opens on the first time (GraphiQL remembers the tabs after that): an
# order's timeline, with where the token goes.
EXAMPLE_QUERY = """# An order's timeline. Put your token in the Headers tab below
# (scripts/token makes a development one), then run this with the button or Ctrl-Enter.
query Timeline {
  orderEvents(accountId: "T12345678", orderId: "order-1", first: 20) {
    state
    events { version state service serviceStatus description metadata createdAt createdBy }
    pageInfo { hasNextPage endCursor }
  }
}
"""

# Constant, so the Content-Security-Policy can allow exactly this inline script by its hash.
_START_SCRIPT = Template("""
(function () {
  "use strict";
  var hint = $hint;
  // A query to start with can come in the fragment (/graphql#query=...): a "query" parameter
  // in the URL's query string would make GET /graphql run it instead of serving this page.
  var page = new URLSearchParams(window.location.hash.slice(1));
  var url = new URL($endpoint, window.location.href);
  var socket = new URL(url.href);
  socket.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  // Subscriptions go over a WebSocket (graphql-transport-ws) to the same path; the Headers
  // editor's JSON becomes the connection_init payload there.
  var send = GraphiQL.createFetcher({
    url: url.href,
    subscriptionUrl: socket.href,
    enableIncrementalDelivery: false
  });
  function fetcher(params, options) {
    if (options && options.headers && options.headers.Authorization === hint) {
      var headers = Object.assign({}, options.headers);
      delete headers.Authorization;
      options = Object.assign({}, options, { headers: headers });
    }
    return send(params, options);
  }
  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultHeaders: JSON.stringify({ Authorization: hint }, null, 2),
      defaultEditorToolsVisibility: "headers",
      defaultQuery: $example,
      query: page.get("query") || undefined,
      variables: page.get("variables") || undefined
    })
  );
})();
""").substitute(
    hint=json.dumps(AUTHORIZATION_HINT),
    endpoint=json.dumps(ENDPOINT),
    example=json.dumps(EXAMPLE_QUERY),
)
_START_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_START_SCRIPT.encode()).digest()).decode()

_CSP = "; ".join(
    (
        "default-src 'none'",
        f"script-src 'self' 'sha256-{_START_SCRIPT_HASH}'",
        # GraphiQL and its editors insert <style> elements; fonts and icons are data: URLs.
        "style-src 'self' 'unsafe-inline'",
        "font-src 'self' data:",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
    )
)

_PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="$csp">
<title>Order events API · GraphiQL</title>
<link rel="stylesheet" href="$css">
<style>html, body, #graphiql { height: 100%; margin: 0; }</style>
</head>
<body>
<div id="graphiql">Loading GraphiQL…</div>
<script src="$react"></script>
<script src="$react_dom"></script>
<script src="$graphiql"></script>
<script>$start</script>
</body>
</html>
""")

_NOT_INSTALLED_PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Order events API · GraphiQL is not installed</title>
<style>body { font: 16px/1.5 sans-serif; max-width: 46em; margin: 2em auto; padding: 0 1em; }
code { background: #f2f2f2; padding: 0 .2em; }</style>
</head>
<body>
<h1>GraphiQL is not installed</h1>
<p>The GraphQL API works: POST a JSON body such as
<code>{"query": "{ __typename }"}</code> to <code>$endpoint</code>.</p>
<p>GraphiQL's browser files are fetched from the npm registry when the project is installed,
never from the internet while you use it, and they are not here yet: run
<code>scripts/install-graphiql</code> (<code>scripts/install</code> runs it too) on this
machine with <code>npm</code> and the npm registry, or a mirror of it, reachable.
Then reload this page.</p>
<p>Looked in <code>$assets_dir</code> (setting <code>GRAPHIQL_ASSETS_DIR</code>) for:</p>
<ul>
$missing
</ul>
</body>
</html>
""")

NOT_INSTALLED_TEXT = "GraphiQL's browser assets are not installed: run scripts/install-graphiql\n"


def graphiql_html(settings: Settings) -> str:
    """The GraphiQL page, or a plain page saying how to install it when its assets are missing."""
    assets_dir = settings.graphiql_assets_dir
    versions = _installed_versions(assets_dir)
    missing = [asset for asset in ASSETS.values() if asset.package not in versions]
    if missing:
        items = "\n".join(
            f"<li><code>{html.escape(f'{asset.package}/{asset.path}')}</code></li>"
            for asset in missing
        )
        return _NOT_INSTALLED_PAGE.substitute(
            endpoint=ENDPOINT, assets_dir=html.escape(str(assets_dir)), missing=items
        )

    def url(name: str) -> str:
        # The version in the URL lets the files be cached for good: new pins, new URLs.
        version = versions[ASSETS[name].package]
        return html.escape(f"{ASSETS_PATH}/{name}?v={quote(version)}")

    return _PAGE.substitute(
        csp=_CSP,
        css=url("graphiql.min.css"),
        react=url("react.production.min.js"),
        react_dom=url("react-dom.production.min.js"),
        graphiql=url("graphiql.min.js"),
        start=_START_SCRIPT,
    )


def graphiql_routes(settings: Settings) -> list[BaseRoute]:
    """Routes serving the GraphiQL page's scripts and styles; none when GraphiQL is off."""
    if not settings.graphiql:
        return []
    assets_dir = settings.graphiql_assets_dir

    # A plain function, so Starlette runs its file-system checks in a worker thread.
    def serve_asset(request: Request) -> Response:
        asset = ASSETS.get(request.path_params["name"])
        if asset is None:
            return PlainTextResponse("Not Found", status_code=404)
        version = _installed_versions(assets_dir).get(asset.package)
        if version is None:
            return PlainTextResponse(NOT_INSTALLED_TEXT, status_code=404)
        if request.query_params.get("v") == version:
            cache = "public, max-age=31536000, immutable"
        else:
            cache = "no-cache"
        return FileResponse(
            asset.file(assets_dir),
            media_type=asset.media_type,
            headers={"cache-control": cache, "x-content-type-options": "nosniff"},
        )

    return [Mount(ASSETS_PATH, routes=[Route("/{name}", serve_asset, methods=["GET"])])]


def _installed_versions(assets_dir: Path) -> dict[str, str]:
    """The version of each asset package whose files are all present."""
    versions: dict[str, str] = {}
    for package in {asset.package for asset in ASSETS.values()}:
        files = [asset.file(assets_dir) for asset in ASSETS.values() if asset.package == package]
        if not all(path.is_file() for path in files):
            continue
        try:
            meta = json.loads((assets_dir / package / "package.json").read_text("utf-8"))
        except (OSError, ValueError):
            continue
        version = meta.get("version") if isinstance(meta, dict) else None
        if isinstance(version, str):
            versions[package] = version
    return versions
