"""Sends the requests a careful NBD client never sends and records the server's answers.

Run with the system python (Debian's python3-libnbd):
    /usr/bin/python3 strict_mode_probe.py URI [--skip CASE,CASE]
It clears libnbd's client-side checks (set_strict_mode(0)), the way libnbd's own
errors-server-* tests judge servers, and for every case, with and without structured
replies, opens a fresh connection, sends one bad request, records the errno the server
answered (or "ok"), then sends one good request to see whether the connection survived.
Requests libnbd refuses to send even then (over 64 MiB, unknown commands) go over a raw
socket. Prints one JSON object: {"structured"|"simple": {case: {"errno": ..., "alive": ...}}}.
"""
import errno
import json
import socket
import struct
import sys
import urllib.parse

import nbd

URI = sys.argv[1]
# --skip a,b: cases not to send (a reference server that cannot survive them).
SKIP = set(sys.argv[3].split(",")) if len(sys.argv) > 3 and sys.argv[2] == "--skip" else set()
BLOCK = 512
MIB64 = 64 * 1024 * 1024
# An unknown flag bit (bit 10; bits 0-5 are defined or reserved for extensions).
UNKNOWN_FLAG = 1 << 10


def name_of(code):
    return errno.errorcode.get(code, str(code))


def connect(structured, context=None):
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.set_request_structured_replies(structured)
    if context is not None:
        h.add_meta_context(context)
    h.connect_uri(URI)
    return h


def good_request(h):
    try:
        h.pread(BLOCK, 0)
        return True
    except nbd.Error:
        return False


def cases(size):
    beyond = size + 4096
    crossing = size - BLOCK
    def status(h, length, offset, flags=0):
        h.block_status(length, offset, lambda *args: 0, flags)
    return {
        # Out of range: starting inside the export and running past its end, and starting past it.
        "read-crossing-end": lambda h: h.pread(2 * BLOCK, crossing),
        "read-beyond-end": lambda h: h.pread(BLOCK, beyond),
        "write-crossing-end": lambda h: h.pwrite(b"\1" * (2 * BLOCK), crossing),
        "write-beyond-end": lambda h: h.pwrite(b"\1" * BLOCK, beyond),
        "trim-crossing-end": lambda h: h.trim(2 * BLOCK, crossing),
        "trim-beyond-end": lambda h: h.trim(BLOCK, beyond),
        "zero-crossing-end": lambda h: h.zero(2 * BLOCK, crossing),
        "zero-beyond-end": lambda h: h.zero(BLOCK, beyond),
        "cache-crossing-end": lambda h: h.cache(2 * BLOCK, crossing),
        "cache-beyond-end": lambda h: h.cache(BLOCK, beyond),
        "block-status-crossing-end": (lambda h: status(h, 2 * BLOCK, crossing), "base:allocation"),
        "block-status-beyond-end": (lambda h: status(h, BLOCK, beyond), "base:allocation"),
        # Zero-length commands (the spec leaves the answer open but forbids disconnecting).
        "read-zero-length": lambda h: h.pread(0, 0),
        "write-zero-length": lambda h: h.pwrite(b"", 0),
        "trim-zero-length": lambda h: h.trim(0, 0),
        "zero-zero-length": lambda h: h.zero(0, 0),
        "cache-zero-length": lambda h: h.cache(0, 0),
        "block-status-zero-length": (lambda h: status(h, 0, 0), "base:allocation"),
        # Flags: unknown, misapplied, or not advertised.
        "read-unknown-flag": lambda h: h.pread(BLOCK, 0, UNKNOWN_FLAG),
        "write-unknown-flag": lambda h: h.pwrite(b"\1" * BLOCK, 0, UNKNOWN_FLAG),
        "read-no-hole-flag": lambda h: h.pread(BLOCK, 0, nbd.CMD_FLAG_NO_HOLE),
        "write-req-one-flag": lambda h: h.pwrite(b"\1" * BLOCK, 0, nbd.CMD_FLAG_REQ_ONE),
        "trim-fast-zero-flag": lambda h: h.trim(BLOCK, 0, nbd.CMD_FLAG_FAST_ZERO),
        "read-df-flag": lambda h: h.pread(BLOCK, 0, nbd.CMD_FLAG_DF),
        "zero-fast-zero-flag": lambda h: h.zero(BLOCK, 0, nbd.CMD_FLAG_FAST_ZERO),
        # Block status without a negotiated context, and with only an unknown one requested.
        "block-status-no-context": lambda h: status(h, BLOCK, 0),
        "block-status-unknown-context": (lambda h: status(h, BLOCK, 0), "nbdps-test:no-such-context"),
        # Every write-class command (on a read-only export these must fail with EPERM).
        "write": lambda h: h.pwrite(b"\1" * BLOCK, 0),
        "write-fua": lambda h: h.pwrite(b"\1" * BLOCK, 0, nbd.CMD_FLAG_FUA),
        "trim": lambda h: h.trim(BLOCK, 0),
        "zero": lambda h: h.zero(BLOCK, 0),
        "zero-no-hole": lambda h: h.zero(BLOCK, 0, nbd.CMD_FLAG_NO_HOLE),
        "flush": lambda h: h.flush(),
    }


def run_libnbd_case(structured, action, context):
    h = connect(structured, context)
    try:
        try:
            action(h)
            answer = "ok"
        except nbd.Error as e:
            if e.errno is None:
                answer = "client:" + (e.string or "?")
            else:
                answer = name_of(e.errno)
        return {"errno": answer, "alive": good_request(h)}
    finally:
        try:
            h.shutdown()
        except nbd.Error:
            pass


# ---- raw socket cases: what libnbd will not send even in non-strict mode ----

NBD_OPT_GO, NBD_OPT_STRUCTURED_REPLY = 7, 8
NBD_CMD_READ, NBD_CMD_WRITE = 0, 1


def raw_connect(structured):
    u = urllib.parse.urlparse(URI)
    if u.scheme == "nbd+unix":
        s = socket.socket(socket.AF_UNIX)
        s.connect(urllib.parse.parse_qs(u.query)["socket"][0])
    else:
        s = socket.create_connection((u.hostname, u.port or 10809))
    name = urllib.parse.unquote(u.path[1:]).encode()
    s.settimeout(30)
    recv_exact(s, 18)
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    if structured:
        s.sendall(struct.pack(">QII", 0x49484156454F5054, NBD_OPT_STRUCTURED_REPLY, 0))
        read_option_reply(s)
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", 0x49484156454F5054, NBD_OPT_GO, len(data)) + data)
    while read_option_reply(s) != 1:  # until ACK
        pass
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        part = s.recv(n - len(buf))
        if not part:
            raise EOFError("server closed the connection")
        buf += part
    return buf


def read_option_reply(s):
    _, _, kind, length = struct.unpack(">QIII", recv_exact(s, 20))
    recv_exact(s, length)
    if kind & 0x80000000:
        raise RuntimeError("option refused: 0x%x" % kind)
    return kind


def raw_request(s, cmd, offset, length, cookie, payload=b""):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, cmd, cookie, offset, length) + payload)


def raw_reply(s, expect_data):
    """Returns (errno or 0, data) of one whole reply in either reply mode."""
    magic = struct.unpack(">I", recv_exact(s, 4))[0]
    if magic == 0x67446698:
        err, _ = struct.unpack(">IQ", recv_exact(s, 12))
        return err, recv_exact(s, expect_data) if err == 0 else b""
    err, data = 0, b""
    while True:
        flags, kind, _, length = struct.unpack(">HHQI", recv_exact(s, 16))
        payload = recv_exact(s, length)
        if kind == 1:  # OFFSET_DATA
            data += payload[8:]
        elif kind == 2:  # OFFSET_HOLE: reads as zeroes
            data += bytes(struct.unpack(">I", payload[8:12])[0])
        elif kind & 0x8000:
            err = struct.unpack(">I", payload[:4])[0]
        if flags & 1:
            return err, data


def run_raw_case(structured, send, expect_data=0):
    try:
        s = raw_connect(structured)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        return {"errno": "connect:" + str(e), "alive": False}
    with s:
        try:
            send(s)
            err, _ = raw_reply(s, expect_data)
            answer = "ok" if err == 0 else name_of(err)
        except (OSError, EOFError) as e:
            return {"errno": "closed:" + str(e), "alive": False}
        try:
            raw_request(s, NBD_CMD_READ, 0, BLOCK, 99)
            err, data = raw_reply(s, BLOCK)
            alive = err == 0 and len(data) == BLOCK
        except (OSError, EOFError):
            alive = False
        return {"errno": answer, "alive": alive}


RAW_CASES = {
    "read-oversize": lambda s: raw_request(s, NBD_CMD_READ, 0, MIB64 + BLOCK, 1),
    "write-oversize": lambda s: raw_request(s, NBD_CMD_WRITE, 0, MIB64 + BLOCK, 1, bytes(MIB64 + BLOCK)),
    "unknown-command": lambda s: raw_request(s, 77, 0, BLOCK, 1),
}


def main():
    size = None
    h = connect(False)
    try:
        size = h.get_size()
    finally:
        h.shutdown()
    result = {}
    for structured in (True, False):
        mode = {}
        for name, case in cases(size).items():
            if name in SKIP:
                continue
            action, context = case if isinstance(case, tuple) else (case, None)
            mode[name] = run_libnbd_case(structured, action, context)
        for name, send in RAW_CASES.items():
            if name in SKIP:
                continue
            mode[name] = run_raw_case(structured, send)
        result["structured" if structured else "simple"] = mode
    json.dump(result, sys.stdout, indent=1, sort_keys=True)


main()
