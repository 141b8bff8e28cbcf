"""The run configuration: schema, presets and command-line parsing."""
from .parsing import coerce, load_run_config, parse_config, print_preset_listing
from .presets import ConfigError, preset_listing, preset_names
from .schema import EVALUATE, STAGE1, STAGE2, RunConfig

__all__ = ["RunConfig", "ConfigError", "parse_config", "load_run_config", "coerce", "preset_names", "preset_listing",
           "print_preset_listing", "STAGE1", "STAGE2", "EVALUATE"]
