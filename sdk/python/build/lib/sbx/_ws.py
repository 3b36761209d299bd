"""A minimal WebSocket client (RFC 6455) for the PTY: a sans-I/O frame codec
plus a blocking-socket and an asyncio transport. Enough for binary/text
messages, fragmentation, ping/pong and the close handshake; no extensions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import ssl
import struct
from typing import Mapping, Optional
from urllib.parse import urlsplit

from .errors import SbxConnectionError, SbxError, error_from_response

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 64 * 1024


def encode_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, masked (client-to-server) frame."""
    head = bytearray([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    mask = os.urandom(4)
    head += mask
    if not payload:
        return bytes(head)
    # XOR with the mask repeated, via big integers (fast enough for PTY traffic).
    reps = mask * (n // 4 + 1)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(reps[:n], "big")).to_bytes(n, "big")
    return bytes(head) + masked


class FrameDecoder:
    """Reassembles server frames into ``(opcode, payload)`` messages."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._frag_op: Optional[int] = None
        self._frag = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return out
            fin, opcode, payload = frame
            if opcode >= 0x8:  # control frames are never fragmented
                out.append((opcode, payload))
            elif opcode == CONT:
                if self._frag_op is None:
                    raise SbxError("websocket: continuation frame without a start")
                self._frag += payload
                if fin:
                    out.append((self._frag_op, bytes(self._frag)))
                    self._frag_op, self._frag = None, bytearray()
            elif fin:
                out.append((opcode, payload))
            else:
                self._frag_op, self._frag = opcode, bytearray(payload)

    def _next_frame(self) -> Optional[tuple[bool, int, bytes]]:
        buf = self._buf
        if len(buf) < 2:
            return None
        fin = bool(buf[0] & 0x80)
        opcode = buf[0] & 0x0F
        masked = bool(buf[1] & 0x80)
        n = buf[1] & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack_from("!H", buf, 2)
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack_from("!Q", buf, 2)
            pos = 10
        mask = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            mask = bytes(buf[pos : pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos : pos + n])
        del buf[: pos + n]
        if masked and payload:
            reps = mask * (n // 4 + 1)
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(reps[:n], "big")).to_bytes(n, "big")
        return fin, opcode, payload


def _target(url: str) -> tuple[str, int, bool, str]:
    """host, port, tls, request path of a ws:// wss:// http:// or https:// URL."""
    parts = urlsplit(url)
    tls = parts.scheme in ("wss", "https")
    host = parts.hostname or "localhost"
    port = parts.port or (443 if tls else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, port, tls, path


def _handshake(host: str, port: int, path: str, headers: Mapping[str, str]) -> tuple[bytes, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    default_port = port in (80, 443)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host if default_port else f'{host}:{port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    text = head.decode("latin-1")
    status_line, *header_lines = text.split("\r\n")
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise SbxError(f"websocket: bad handshake answer {status_line!r}") from None
    headers = {}
    for line in header_lines:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


def _check_accept(headers: dict[str, str], key: str) -> None:
    expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
    if headers.get("sec-websocket-accept") != expected:
        raise SbxError("websocket: the server answered the handshake with a wrong Sec-WebSocket-Accept")


def _close_info(payload: bytes) -> tuple[Optional[int], str]:
    if len(payload) >= 2:
        return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")
    return None, ""


class WebSocket:
    """A blocking WebSocket connection."""

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self._sock = sock
        self._decoder = FrameDecoder()
        self._pending = self._decoder.feed(leftover)
        self.closed = False
        self.close_code: Optional[int] = None
        self.close_reason = ""

    @classmethod
    def connect(cls, url: str, headers: Mapping[str, str], timeout: float = 30.0) -> "WebSocket":
        host, port, tls, path = _target(url)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            if tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except OSError as e:
            raise SbxConnectionError(f"websocket connect to {host}:{port}: {e}") from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request, key = _handshake(host, port, path, headers)
            sock.sendall(request)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise SbxConnectionError("websocket: connection closed during the handshake")
                buf += chunk
                if len(buf) > _MAX_HEAD and b"\r\n\r\n" not in buf:
                    raise SbxError("websocket: handshake answer too long")
            head, rest = buf.split(b"\r\n\r\n", 1)
            status, resp_headers = _parse_head(head)
            if status != 101:
                length = int(resp_headers.get("content-length", "0") or 0)
                while len(rest) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                raise error_from_response(status, rest[:length] if length else rest)
            _check_accept(resp_headers, key)
            sock.settimeout(None)
            return cls(sock, rest)
        except BaseException:
            sock.close()
            raise

    def send(self, opcode: int, payload: bytes) -> None:
        if self.closed:
            raise SbxError("websocket is closed")
        try:
            self._sock.sendall(encode_frame(opcode, payload))
        except OSError as e:
            raise SbxConnectionError(f"websocket send: {e}") from e

    def recv(self, timeout: Optional[float] = None) -> Optional[tuple[int, bytes]]:
        """The next data message; None once closed. Raises ``socket.timeout``
        (a ``TimeoutError``) when nothing arrives within ``timeout`` seconds."""
        while True:
            while self._pending:
                opcode, payload = self._pending.pop(0)
                if opcode == PING:
                    self.send(PONG, payload)
                elif opcode == CLOSE:
                    self.close_code, self.close_reason = _close_info(payload)
                    self._shutdown(reply=payload[:2])
                    return None
                elif opcode in (TEXT, BINARY):
                    return opcode, payload
            if self.closed:
                return None
            self._sock.settimeout(timeout)
            try:
                data = self._sock.recv(65536)
            except (socket.timeout, TimeoutError):
                raise TimeoutError("no websocket message within the timeout") from None
            except OSError as e:
                self._shutdown(reply=None)
                raise SbxConnectionError(f"websocket recv: {e}") from e
            if not data:
                self._shutdown(reply=None)
                return None
            self._pending += self._decoder.feed(data)

    def _shutdown(self, reply: Optional[bytes]) -> None:
        if self.closed:
            return
        if reply is not None:
            try:
                self._sock.sendall(encode_frame(CLOSE, reply))
            except OSError:
                pass
        self.closed = True
        self._sock.close()

    def close(self, code: int = 1000) -> None:
        self._shutdown(reply=struct.pack("!H", code))


class AsyncWebSocket:
    """An asyncio WebSocket connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, leftover: bytes) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder()
        self._pending = self._decoder.feed(leftover)
        self.closed = False
        self.close_code: Optional[int] = None
        self.close_reason = ""

    @classmethod
    async def connect(cls, url: str, headers: Mapping[str, str], timeout: float = 30.0) -> "AsyncWebSocket":
        host, port, tls, path = _target(url)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ssl.create_default_context() if tls else None),
                timeout,
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise SbxConnectionError(f"websocket connect to {host}:{port}: {e}") from e
        try:
            request, key = _handshake(host, port, path, headers)
            writer.write(request)
            await writer.drain()
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            except asyncio.IncompleteReadError:
                raise SbxConnectionError("websocket: connection closed during the handshake") from None
            status, resp_headers = _parse_head(head[:-4])
            if status != 101:
                length = int(resp_headers.get("content-length", "0") or 0)
                body = await reader.read(length) if length else b""
                raise error_from_response(status, body)
            _check_accept(resp_headers, key)
            return cls(reader, writer, b"")
        except BaseException:
            writer.close()
            raise

    async def send(self, opcode: int, payload: bytes) -> None:
        if self.closed:
            raise SbxError("websocket is closed")
        try:
            self._writer.write(encode_frame(opcode, payload))
            await self._writer.drain()
        except OSError as e:
            raise SbxConnectionError(f"websocket send: {e}") from e

    async def recv(self) -> Optional[tuple[int, bytes]]:
        """The next data message; None once closed."""
        while True:
            while self._pending:
                opcode, payload = self._pending.pop(0)
                if opcode == PING:
                    await self.send(PONG, payload)
                elif opcode == CLOSE:
                    self.close_code, self.close_reason = _close_info(payload)
                    await self._shutdown(reply=payload[:2])
                    return None
                elif opcode in (TEXT, BINARY):
                    return opcode, payload
            if self.closed:
                return None
            try:
                data = await self._reader.read(65536)
            except OSError as e:
                await self._shutdown(reply=None)
                raise SbxConnectionError(f"websocket recv: {e}") from e
            if not data:
                await self._shutdown(reply=None)
                return None
            self._pending += self._decoder.feed(data)

    async def _shutdown(self, reply: Optional[bytes]) -> None:
        if self.closed:
            return
        self.closed = True
        if reply is not None:
            try:
                self._writer.write(encode_frame(CLOSE, reply))
                await self._writer.drain()
            except OSError:
                pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def close(self, code: int = 1000) -> None:
        await self._shutdown(reply=struct.pack("!H", code))
