"""Floor for bench_hosted.py: a bare MCPServer with one no-op tool over Streamable HTTP (argv: port)."""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

server = MCPServer("noop")


@server.tool()
async def noop(text: str = "") -> str:
    """Do nothing and return at once."""
    return "ok"


@server.custom_route("/readyz", methods=["GET"])
async def readyz(_: Request) -> Response:
    return JSONResponse({"status": "ready"})


if __name__ == "__main__":
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                server_header=False)
