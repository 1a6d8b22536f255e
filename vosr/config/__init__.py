"""Typed configuration: YAML in, dotted ``key=value`` overrides, validation with clear errors."""
from vosr.config.core import ConfigError, apply_overrides, from_dict, load, read_yaml, resolve_path, save_yaml, to_dict
from vosr.config.degradation import DegradationConfig
from vosr.config.run import (
    AutoencoderConfig,
    CheckpointConfig,
    DataConfig,
    DataSource,
    DistillConfig,
    EngineConfig,
    FlowConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SemanticConfig,
)


def load_run_config(path: str | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a ``RunConfig`` from YAML plus ``key=value`` overrides; raises ``ConfigError``."""
    return load(RunConfig, path, overrides)


__all__ = [
    "AutoencoderConfig", "CheckpointConfig", "ConfigError", "DataConfig", "DataSource", "DegradationConfig",
    "DistillConfig", "EngineConfig", "FlowConfig", "LogConfig", "ModelConfig", "OptimConfig", "RunConfig",
    "SemanticConfig", "apply_overrides", "from_dict", "load", "load_run_config", "read_yaml", "resolve_path",
    "save_yaml", "to_dict",
]
