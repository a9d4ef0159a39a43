#!/usr/bin/env python3
"""Tops an Orthanc up to N studies (one instance each), dates spread over ten years.
usage: seed_orthanc.py BASE_URL USER PASSWORD N"""
import base64
import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

base, user, password, target = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": auth, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


have = call("GET", "/statistics")["CountStudies"]


def create(i):
    uid = f"1.2.826.0.1.3680043.10.543.{i + 1}"
    day = date(2025, 12, 31) - timedelta(days=(i * 3650) // max(target, 1))
    call("POST", "/tools/create-dicom", {"Force": True, "Tags": {
        "PatientID": f"BENCH-{i % 997}", "PatientName": f"Bench^{i}", "StudyInstanceUID": uid,
        "SeriesInstanceUID": uid + ".1", "SOPInstanceUID": uid + ".1.1", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "AccessionNumber": f"B{i:07d}", "StudyDate": day.strftime("%Y%m%d"),
        "StudyTime": f"{8 + i % 10:02d}{i % 60:02d}00", "Modality": ["CT", "MR", "CR", "US"][i % 4],
        "StudyDescription": f"BENCH STUDY {i}"}})


with ThreadPoolExecutor(8) as pool:
    list(pool.map(create, range(have, target)))
print(call("GET", "/statistics")["CountStudies"])
