"""Entry point for MCPB / Claude Desktop: runs `stackmemory serve` (stdio) from a plain script path."""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as `python server/main.py`: make the folder holding server/ and tools/ importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
