"""Does the deployed service serve the registry's champion? Prints GitHub step outputs.

    python3 deploy/ci/champion_check.py --tracking-uri http://mlflow:5000 \
        --service-url http://127.0.0.1:8004 [--model poimatch-xgb] [--alias champion]

Asks the MLflow registry which version holds the alias (REST:
``GET /api/2.0/mlflow/registered-models/alias``) and the service which version it serves
(``GET /version``, field ``model_version``), then prints ``champion=<n>``,
``deployed=<n>`` and ``changed=true|false``:

- the versions differ, or the service does not answer -> ``changed=true`` (redeploy);
- the registry has no such alias yet -> ``changed=false`` (nothing to serve);
- the registry does not answer -> exit status 1 (no decision; the workflow fails).

With ``--wait SECONDS`` it checks again every few seconds until the service serves the
champion (after a redeploy: the container is healthy before the model is loaded) and exits
with status 3 if it still does not when the time is up.

Credentials, when the server needs them, come from the MLflow client's variables
(``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``).
Standard library only, so that CI can pipe it into any Python, e.g. the service container's:
``docker compose ... exec -T service /opt/poimatch/.venv/bin/python - ARGS < this file``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

ALIAS_API = "/api/2.0/mlflow/registered-models/alias"


def _get_json(url: str, timeout: float, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {pair}"}
    return {}


def registry_version(tracking_uri: str, model: str, alias: str, timeout: float) -> str | None:
    """The version holding ``alias``; None when the model or the alias does not exist."""
    query = urllib.parse.urlencode({"name": model, "alias": alias})
    url = f"{tracking_uri.rstrip('/')}{ALIAS_API}?{query}"
    try:
        body = _get_json(url, timeout, _auth_headers())
    except urllib.error.HTTPError as exc:
        # No such model: 404 RESOURCE_DOES_NOT_EXIST. A model without the alias:
        # 400 INVALID_PARAMETER_VALUE "Registered model alias <alias> not found."
        detail = exc.read().decode("utf-8", "replace")
        if exc.code == 404 or (exc.code == 400 and "not found" in detail):
            return None
        raise
    return str(body["model_version"]["version"])


def served_version(service_url: str, timeout: float) -> str | None:
    """``model_version`` from the service's /version; None when it cannot say."""
    try:
        body = _get_json(f"{service_url.rstrip('/')}/version", timeout)
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, bad JSON
        print(f"service: {exc}", file=sys.stderr)
        return None
    version = body.get("model_version") if isinstance(body, dict) else None
    return None if version is None else str(version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    )
    parser.add_argument("--service-url", default="http://127.0.0.1:8004")
    parser.add_argument("--model", default="poimatch-xgb")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for the service to catch up"
    )
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            champion = registry_version(args.tracking_uri, args.model, args.alias, args.timeout)
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: registry {args.tracking_uri}: {exc}", file=sys.stderr)
            return 1
        deployed = served_version(args.service_url, args.timeout)
        remaining = deadline - time.monotonic()
        if champion is None or deployed == champion or remaining <= 0:
            break
        time.sleep(min(5.0, remaining))
    print(f"champion={champion or ''}")
    print(f"deployed={deployed or ''}")
    if champion is None:
        print(f"no {args.model}@{args.alias} in the registry: nothing to deploy", file=sys.stderr)
        changed = False
    else:
        changed = deployed != champion
    print(f"changed={'true' if changed else 'false'}")
    if changed and args.wait > 0:
        print(
            f"error: the service did not load version {champion} in {args.wait:g} s",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
