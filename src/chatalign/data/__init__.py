"""The data layer: sources, the mixer, statistics, the canonical schemas and their validation, format adapters, chat
templates and rendering to (ids, labels).

Importing any module of this package registers the built-in format adapters first (below), so format detection and
``get_adapter`` always know them. Nothing else is imported here: each module is imported where it is used.
"""

import chatalign.data.adapters  # noqa: F401  (registers the built-in formats)
