"""Pod-side source that lets a hostile test pod write on its own protocol pipes, as any pod process can.

Paste ``FORGE`` at the top of a test pod's ``pod.py``: ``send(data)`` writes raw bytes to the
client, ``bson(doc)`` encodes a document with the worker's own encoder (the documented wire
format), and ``proto_fds()`` gives the worker's (in, out) protocol descriptors.
"""

from __future__ import annotations

FORGE = """
import gc as _gc, os as _os, sys as _sys

def _worker():
    for obj in _gc.get_objects():
        if type(obj).__name__ == "Worker" and hasattr(obj, "out"):
            return obj
    raise RuntimeError("no worker object found")

def proto_fds():
    w = _worker()
    return w.reader.fd, w.out

def send(data):
    out = proto_fds()[1]
    view = memoryview(data)
    while view:
        view = view[_os.write(out, view):]

def bson(doc):
    enc = _sys.modules["_pypods_worker.codec"].Encoder()
    return bytes(enc.document(doc))
"""
