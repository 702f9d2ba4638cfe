"""flowdeck engine: runs DAG workflows of agent steps and persists everything to SQLite.

This package is a library. It never imports textual, rich, console or widgets.
"""

__version__ = "0.1.0"
