"""The warm model: the registered version behind the alias, polled and swapped in."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.tracking import MlflowClient

from poimatch.config import ConfigError
from poimatch.lifecycle.tracking import load_matcher
from poimatch.stages.scoring import MatchModel
from poimatch.stages.spec import MatchingSpec

log = logging.getLogger("poimatch.apps.service")  # one logger name for the whole service

# ------------------------------------------------------------------------ model store


@dataclass(frozen=True)
class LoadedModel:
    """One registered model version, loaded and ready to score."""

    uri: str
    name: str
    version: str
    alias: str | None
    model: MatchModel
    spec: MatchingSpec
    loaded_at: str

    def describe(self) -> dict[str, Any]:
        """What ``GET /version`` shows about the model."""
        return {
            "model_name": self.name,
            "model_version": self.version,
            "model_alias": self.alias,
            "model_uri": self.uri,
            "threshold": self.spec.threshold,
            "grouping_mode": self.spec.grouping_mode,
            "loaded_at": self.loaded_at,
        }


_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class ModelStore:
    """Follows a registered model: an alias (polled) or a fixed version.

    ``current`` is swapped atomically; a request reads it once and keeps that model.
    """

    def __init__(self, uri: str) -> None:
        alias = _ALIAS_URI.match(uri)
        fixed = _VERSION_URI.match(uri)
        if not alias and not fixed:
            raise ConfigError(
                f"service.model_uri {uri!r}: expected models:/<name>@<alias> "
                "or models:/<name>/<version>"
            )
        match = alias or fixed
        assert match is not None  # nosec B101
        self.uri = uri
        self.name = match["name"]
        self.alias: str | None = alias["alias"] if alias else None
        self._fixed_version: str | None = fixed["version"] if fixed else None
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        """The model new requests use (``None`` until the first load)."""
        return self._current

    def target_version(self) -> str:
        """The version the alias points at now (or the fixed version)."""
        if self._fixed_version is not None:
            return self._fixed_version
        assert self.alias is not None  # nosec B101
        return str(MlflowClient().get_model_version_by_alias(self.name, self.alias).version)

    def refresh(self) -> bool:
        """Load the alias's version if it moved; returns True when the model changed."""
        with self._lock:
            version = self.target_version()
            current = self._current
            if current is not None and current.version == version:
                return False
            uri = f"models:/{self.name}/{version}"
            model, spec, _ = load_matcher(uri)
            loaded = LoadedModel(
                uri=uri,
                name=self.name,
                version=version,
                alias=self.alias,
                model=model,
                spec=spec,
                loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            self._current = loaded
        log.info("model %s version %s loaded (alias %s)", self.name, version, self.alias)
        return True
