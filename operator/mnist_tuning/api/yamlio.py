"""YAML output that other parsers read back exactly as written.

PyYAML follows YAML 1.1 only in part: it writes strings such as `1e-05`, `y` or `off` bare,
and kubectl's parser (YAML 1.1 for booleans, YAML 1.2 for numbers) then reads a number or a
boolean where Katib expects a string. Such strings are quoted here.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# Plain scalars that some YAML parser reads as a bool, null or number.
_AMBIGUOUS = re.compile(
    r"""(?x)
    y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF
    |null|Null|NULL|~|
    |[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?
    |[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)
    |0x[0-9a-fA-F_]+|0o?[0-7_]+|0b[01_]+|[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?
    """
)


class _Dumper(yaml.SafeDumper):
    """Block YAML, no anchors or aliases, ambiguous strings quoted."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if _AMBIGUOUS.fullmatch(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(manifest: Any) -> str:
    """Dump a manifest as block YAML in its own key order."""
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)
