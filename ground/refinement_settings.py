"""The `refinement` section of ground.yaml: archival SGA+ refinement jobs (ground/refinement_jobs.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class RefinementSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    originals: Optional[Path] = Field(None, description="folder the operator syncs the drone's card into")
    method: Literal["ssl", "linear", "cosine", "atanh", "ste", "noise"] = Field("ssl", description="SGA+ logit")
    classes: Literal[2, 3] = Field(2, description="two- or three-class rounding")
    steps: int = Field(500, ge=1, description="most optimisation steps per photo")
    time_budget_s: float = Field(600, gt=0, description="seconds per photo, refinement and final encode")
    threads: int = Field(1, ge=1, le=64, description="CPU threads for refinement")
    poll_s: float = Field(30, gt=0, description="how often to look for new archived photos")
