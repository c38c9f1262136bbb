"""The edge service's configuration (edge.yaml). Every field has a default that works on loopback."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from codec.rate_aware_rounding import BETA_MAX, DEFAULT_BETA, PSNR_BETA
from codec.service.config_file import ConfigError, load_config  # noqa: F401  (re-exported for callers)
from codec.service.mqtt import TLS, BrokerSettings, Strict, check_id, check_topic_level  # noqa: F401


class MQTT(BrokerSettings):
    client_id: Optional[str] = Field(None, description="MQTT client id; default edge-<drone>")
    username: Optional[str] = Field(None, description="broker user; must equal the drone id under the ACL")
    max_packet_bytes: int = Field(256 * 1024, ge=1024, le=268435455,
                                  description="packet cap when the broker advertises no maximum in CONNACK")


class Rate(Strict):
    mode: Literal["fixed", "budget"] = Field("fixed", description="fixed λ index, or largest file within max_bytes")
    lambda_index: int = Field(128, ge=0, le=255, description="λ grid index for mode=fixed")
    max_bytes: int = Field(200_000, ge=64, description="per-photo byte budget for mode=budget")
    tile_px: int = Field(1024, description="coding tile size in pixels")
    threads: int = Field(1, ge=1, le=64, description="encoder threads")
    rounding_beta: float = Field(DEFAULT_BETA, ge=0, le=BETA_MAX,
                                 description=f"z1's rate-aware rounding: 0 keeps faint defects' bits; {PSNR_BETA:g} "
                                             "saves ~1 % on PSNR and costs faint defects ~8 % (README)")


class Quota(Strict):
    max_bytes: int = Field(2 * 1024 ** 3, ge=1, description="spool size limit in bytes")
    max_files: int = Field(20_000, ge=1, description="spool size limit in photos")
    when_full: Literal["refuse_new", "drop_oldest"] = Field(
        "refuse_new", description="refuse_new: leave new photos in the inbox; drop_oldest: delete oldest unsent")


class Transfer(Strict):
    ack_timeout_s: float = Field(120, gt=0, description="resend a photo when its ack is this late")
    max_inflight_photos: int = Field(8, ge=1, description="photos published and awaiting an ack at once")


class Backend(Strict):
    """Files and settings handed to the encoder backends; a backend that cannot use them is skipped."""
    onnx: Optional[Path] = Field(None, description="ONNX Runtime image-analysis graph, e.g. encoder.int8.onnx "
                                 "(encoder_latent.onnx is read from the same folder); null: export the model's")
    engine: Optional[Path] = Field(None, description="TensorRT engine file, or a folder of cached engines; "
                                   "null: the tensorrt backend is skipped")
    providers: Literal["auto", "cuda", "cpu"] = Field("auto", description="ONNX Runtime execution provider")

    @field_validator("onnx", "engine")
    @classmethod
    def _exists(cls, path):
        # A mistyped path would otherwise only show as a fallback warning on the drone.
        if path is not None and not path.exists():
            raise ValueError(f"{path} does not exist")
        return path


class EdgeConfig(Strict):
    drone: str = Field("drone-01", description="this drone's id (topic segment, broker user)")
    site: str = Field("site-01", description="inspection site id (topic segment)")
    topic_root: str = Field("blades", description="first topic level")
    model: Optional[Path] = Field(None, description="codec model file; default the bundled model")
    backend_order: list[str] = Field(["tensorrt", "onnxruntime", "torch"], min_length=1,
                                     description="encoder backends to try, in order")
    backend: Backend = Backend()
    inbox: Path = Field(Path("inbox"), description="where the camera drops photos (+ NAME.done markers)")
    spool: Path = Field(Path("spool"), description="encoded photos awaiting the ground's ack")
    processed: Optional[Path] = Field(Path("sent"), description="originals moved here once spooled (kept "
                                      "for later refinement); null deletes them")
    poll_interval_s: float = Field(0.5, gt=0, le=60, description="inbox scan and loop period")
    intake_retry_s: float = Field(30, gt=0, le=3600, description="after the encoder or the spool's disk failed, "
                                  "wait this long before taking the next photo (acks and sending go on)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log verbosity")
    rate: Rate = Rate()
    spool_quota: Quota = Quota()
    transfer: Transfer = Transfer()
    mqtt: MQTT = MQTT()

    _safe_id = field_validator("drone", "site")(check_id)
    _safe_root = field_validator("topic_root")(check_topic_level)

    @model_validator(mode="after")
    def _defaults(self):
        if self.mqtt.client_id is None:
            self.mqtt.client_id = f"edge-{self.drone}"
        return self


def load(path) -> EdgeConfig:
    return load_config(path, EdgeConfig)
