"""Floor for bench_local.py: a bare MCPServer with one no-op tool, served over stdio."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("noop")


@server.tool()
async def noop(text: str = "") -> str:
    """Do nothing and return at once."""
    return "ok"


if __name__ == "__main__":
    server.run("stdio")
