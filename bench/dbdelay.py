"""A TCP proxy on loopback that delays every chunk by a fixed time, both ways,
in order: a database "across a network" for bench/load.py.

    .venv/bin/python bench/dbdelay.py --target 127.0.0.1:5432 --delay-ms 20 [--port 0]

Prints the port it listens on (127.0.0.1) as its first line, then serves until
it is terminated. Each chunk read from one side is written to the other
`delay` seconds after it was read; chunks are not held behind one another
(a burst of packets arrives as a burst, each one `delay` late), and their
order is kept. It runs in a process of its own so that the bench's busy event
loop does not add to the delay. Loopback only: it refuses any other address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import sys


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + delay, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait((loop.time() + delay, b""))

    async def write() -> None:
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    await asyncio.gather(read(), write())


async def serve(target_host: str, target_port: int, delay: float, port: int = 0) -> None:
    if not loopback(target_host):
        raise SystemExit(f"dbdelay: {target_host} is not a loopback address")

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # cancelled when the proxy stops
            await asyncio.gather(
                _pump(client_reader, server_writer, delay),
                _pump(server_reader, client_writer, delay),
            )

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:5432")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    asyncio.run(serve(host or "127.0.0.1", int(port), args.delay_ms / 1000, args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
