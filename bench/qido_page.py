#!/usr/bin/env python3
"""The plain client: pages QIDO-RS /studies with limit/offset (the same attributes the
service asks for) until an empty page, storing nothing. Prints "<studies> <seconds>".
usage: qido_page.py DICOMWEB_URL USER PASSWORD PAGE_SIZE"""
import base64
import json
import sys
import time
import urllib.request

base, user, password, page = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
fields = "".join(f"&includefield={t}" for t in ["00081030", "00080061", "00201206", "00201208", "00080201", "00100021"])
started = time.monotonic()
seen, offset = set(), 0
while True:
    req = urllib.request.Request(f"{base}/studies?limit={page}&offset={offset}{fields}",
                                 headers={"Authorization": auth, "Accept": "application/dicom+json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        body = r.read()
    items = json.loads(body) if body.strip() else []
    if not items:
        break
    seen.update(i["0020000D"]["Value"][0] for i in items)
    offset += len(items)
print(len(seen), round(time.monotonic() - started, 3))
