#!/usr/bin/env python3
"""A receiving RIS for tests: python-hl7's asyncio MLLP server (PyPI `hl7`).

    python tests/hl7_ris.py --port P [--nak-first N] [--record FILE]

Listens on 127.0.0.1:P (0 picks a free port) and prints `LISTENING <port>` on stdout once
ready. Every received message is appended to FILE as one JSON line
    {"control_id": MSH-10, "type": MSH-9, "raw": text, "charset": ..., "acked": "AA"|"AE"|"AR"}
before its ACK is sent. The ACK has MSA-2 = the received MSH-10 and a fresh MSH-10. The
first N messages (--nak-first) get MSA-1 AE with an ERR segment; a message that cannot be
ACKed normally (no MSH, empty MSH-9) gets AR and does not count towards N. Several
messages per connection are fine. SIGTERM/SIGINT: exit 0.

The text is decoded by MSH-18 (empty: UTF-8, else Latin-1 if that fails); "raw" is that
text exactly as received (segment separators untouched).
"""
import argparse
import ssl
import asyncio
import json
import os
import signal
import sys
import uuid

import hl7
import hl7.mllp

CHARSETS = {"": "utf-8", "ASCII": "ascii", "8859/1": "latin-1", "UNICODE UTF-8": "utf-8"}
ERR = "ERR|^^^207&Application internal error&HL70357||207^Application internal error^HL70357|E"


def decode(block):
    """Text of an MLLP block, decoded by the charset its MSH-18 names."""
    msh = block.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = msh.split(msh[3:4] or b"|") if msh.startswith(b"MSH") else []
    name = fields[17].decode("ascii", "replace").strip() if len(fields) > 17 else ""
    charset = CHARSETS.get(name, "utf-8")
    try:
        return block.decode(charset), charset
    except UnicodeDecodeError:
        return block.decode("latin-1"), "latin-1"


def new_control_id():
    return "ACK" + uuid.uuid4().hex[:16].upper()


def answer(text, code):
    """(control_id, type, code, ACK text) for a received message."""
    try:
        message = hl7.parse(text.replace("\r\n", "\r").replace("\n", "\r"))
        msh = message.segment("MSH")
    except Exception:  # not HL7 at all: reject, echoing nothing
        return None, None, "AR", "MSH|^~\\&|RIS|RIS|||||ACK|%s|P|2.5.1\rMSA|AR|\r" % new_control_id()
    control_id, msg_type = str(msh(10)), str(msh(9))
    try:
        ack = message.create_ack(code, message_id=new_control_id())
    except (TypeError, IndexError, KeyError):  # python-hl7 needs MSH-9 with a trigger event
        return control_id, msg_type, "AR", (
            "MSH|^~\\&|RIS|RIS|||||ACK|%s|P|%s\rMSA|AR|%s|MSH-9 unreadable\r" % (new_control_id(), msh(12), control_id))
    if code == "AA":
        return control_id, msg_type, code, str(ack)
    ack.segment("MSA").assign_field("Simulated error (--nak-first)", 3)
    return control_id, msg_type, code, str(ack) + ERR + "\r"


class Ris:
    def __init__(self, nak_first, record):
        self.naks_left = nak_first
        self.record = record
        self.writers = set()

    async def on_connection(self, reader, writer):
        self.writers.add(writer)
        try:
            while True:
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError:  # the peer closed the connection
                    return
                text, charset = decode(block)
                control_id, msg_type, code, ack = answer(text, "AE" if self.naks_left > 0 else "AA")
                if code == "AE":
                    self.naks_left -= 1
                self.save({"control_id": control_id, "type": msg_type, "raw": text,
                           "charset": charset, "acked": code})
                writer.writeblock(ack.encode(charset, "replace"))
                await writer.drain()
        except (hl7.mllp.InvalidBlockError, ConnectionError) as error:
            print("hl7_ris: %s" % error, file=sys.stderr, flush=True)
        finally:
            self.writers.discard(writer)
            writer.close()

    def save(self, entry):
        if not self.record:
            return
        with open(self.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nak-first", type=int, default=0)
    parser.add_argument("--record")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve MLLP over TLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args()

    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    ris = Ris(args.nak_first, args.record)
    server = await hl7.mllp.start_hl7_server(ris.on_connection, "127.0.0.1", args.port, limit=16 * 1024 * 1024, ssl=tls)
    print("LISTENING %d" % server.sockets[0].getsockname()[1], flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    server.close()
    for writer in list(ris.writers):
        writer.close()
    await asyncio.wait_for(server.wait_closed(), 5)


if __name__ == "__main__":
    asyncio.run(main())
