"""The ground daemon's configuration (ground.yaml). Every field has a default that works on loopback."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from codec.service.config_file import ConfigError, load_config  # noqa: F401  (re-exported for callers)
from codec.service.mqtt import TLS, BrokerSettings, Strict, check_id, check_topic_level  # noqa: F401
from .refinement_settings import RefinementSettings


class MQTT(BrokerSettings):
    client_id: Optional[str] = Field(None, description="MQTT client id; default the ground_id")
    username: Optional[str] = Field(None, description="broker user of the ground station")
    share_group: str = Field("ground", description="shared subscription group: daemons in it split the load")


class Limits(Strict):
    max_bytes: int = Field(64 * 1024 ** 2, ge=1, description="largest bitstream accepted")
    max_chunks: int = Field(100_000, ge=1, description="most chunks per photo")
    max_pixels: int = Field(100_000_000, ge=1, description="largest declared width*height decoded")
    max_side: int = Field(131072, ge=1, description="largest declared width or height decoded")
    max_partial_bytes: int = Field(1024 ** 3, ge=1, description="all incomplete transfers together")


class GroundConfig(Strict):
    ground_id: str = Field("ground-1", description="this daemon's name (catalog column, default client id)")
    topic_root: str = Field("blades", description="first topic level")
    model: Optional[Path] = Field(None, description="codec model file; default the bundled model")
    state_dir: Path = Field(Path("ground-state"), description="incomplete transfers; shared by daemons of one group")
    archive: Path = Field(Path("archive"), description="archive root: <site>/<drone>/<date>/<image_id>.*")
    catalog: Optional[Path] = Field(None, description="SQLite catalog; default <state_dir>/catalog.sqlite")
    reconstruction: Literal["png", "tif"] = Field("png", description="format of the decoded photo")
    decode_threads: int = Field(1, ge=1, le=64, description="decoder threads")
    partial_expiry_s: float = Field(3600, gt=0, description="drop an incomplete transfer idle this long")
    drones: Optional[list[str]] = Field(None, description="if set, only these drone ids are accepted")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log verbosity")
    limits: Limits = Limits()
    mqtt: MQTT = MQTT()
    refinement: RefinementSettings = Field(RefinementSettings(), description="archival SGA+ refinement jobs")

    _safe_id = field_validator("ground_id")(check_id)
    _safe_root = field_validator("topic_root")(check_topic_level)

    @model_validator(mode="after")
    def _defaults(self):
        if self.mqtt.client_id is None:
            self.mqtt.client_id = self.ground_id
        if self.catalog is None:
            self.catalog = self.state_dir / "catalog.sqlite"
        return self


def load(path) -> GroundConfig:
    return load_config(path, GroundConfig)
