"""The live console (Textual). It reads Redis, and writes it unless read-only, only through the core, never the runtime."""

from iii_console.tui.app import ConsoleApp, create_app

__all__ = ["ConsoleApp", "create_app"]
