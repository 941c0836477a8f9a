"""StackMemory: persistent, searchable memory for AI coding assistants over MCP."""

__version__ = "0.1.0"
