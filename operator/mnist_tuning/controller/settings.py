"""Operator settings from environment variables with one prefix, checked once at start-up.

A typo in a variable name is an error rather than a silently ignored setting, so a
Deployment that sets `MNIST_TUNING_NAMESPACE` (singular) fails loudly at start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "MNIST_TUNING_"


class SettingsError(ValueError):
    """Environment settings that cannot be used; the message names each variable and the fix."""


class OperatorSettings(BaseModel):
    """What an operator deployment may tune without a code change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trial_image: str | None = Field(
        None,
        pattern=r"^[^\s]+$",
        description="Trainer image for tunings that do not name one in spec.trial.image.",
    )
    namespaces: tuple[str, ...] = Field(
        (), description="Namespaces to watch (comma-separated); empty means every namespace."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING"] = "INFO"
    log_format: Literal["plain", "full", "json"] = "full"
    liveness_port: int | None = Field(
        8080, ge=0, le=65535, description="Port of the /healthz endpoint; 0 turns it off."
    )
    retry_base_seconds: float = Field(
        5.0, gt=0, description="First retry delay after a fault that may heal by itself."
    )
    retry_max_seconds: float = Field(
        300.0, gt=0, description="Longest retry delay (the delay doubles up to this)."
    )
    workers: int = Field(
        16, ge=1, le=256, description="Reconcile threads, i.e. API calls in flight at once."
    )
    status_interval_seconds: float = Field(
        1.0,
        ge=0,
        description="Shortest time between two status writes that Experiment updates cause "
        "(a burst from Katib is written at its start and its end).",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """Accept `a,b` from the environment."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def retry_delay(self, retry: int) -> float:
        """Exponential backoff for the `retry`-th retry (0-based), capped."""
        return min(self.retry_max_seconds, self.retry_base_seconds * 2.0 ** min(retry, 32))


def load_settings(environ: Mapping[str, str]) -> OperatorSettings:
    """Read `MNIST_TUNING_*` variables; raise SettingsError naming every bad one."""
    values = {
        key.removeprefix(ENV_PREFIX).lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and value != ""
    }
    try:
        return OperatorSettings.model_validate(values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            name = ENV_PREFIX + str(error["loc"][0]).upper() if error["loc"] else ENV_PREFIX
            if error["type"] == "extra_forbidden":
                known = ", ".join(ENV_PREFIX + f.upper() for f in OperatorSettings.model_fields)
                lines.append(f"{name}: unknown setting; the known ones are {known}")
            else:
                lines.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("\n".join(lines)) from None
