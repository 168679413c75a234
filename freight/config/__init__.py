"""Settings: what freight.toml, FREIGHT_* variables and flags say.

``registry``: every setting declared once; ``read``: reading them with the same checks from each
source; ``load``: the Settings object; ``docs``: the reference tables of docs/configuration.md.
"""

from freight.config.load import find_config, load_settings
from freight.config.settings import (
    DEFAULT_CHAT_MODEL,
    DEFAULT_EMBEDDING_MODEL,
    CacheSettings,
    ProjectSettings,
    Settings,
    default_data_dir,
)

__all__ = ["DEFAULT_CHAT_MODEL", "DEFAULT_EMBEDDING_MODEL", "CacheSettings", "ProjectSettings", "Settings",
           "default_data_dir", "find_config", "load_settings"]
