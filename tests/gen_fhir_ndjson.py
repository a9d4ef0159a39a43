#!/usr/bin/env python3
"""Independent generator of FHIR R4 bulk-data NDJSON for the `$import` tests and benchmark.

It shares nothing with the service: every resource is built here from the FHIR R4 spec.

usage:
  python3 tests/gen_fhir_ndjson.py --out DIR --studies N --reports M [--seed S] [--bad]
          [--validate] [--report-text-bytes K] [--id-prefix P]

Writes, streaming (memory stays flat for millions of lines):
  DIR/ImagingStudy.ndjson       N studies, one JSON object per line, UTF-8, '\\n' line ends
  DIR/DiagnosticReport.ndjson   M reports
  DIR/expected.json             {"ImagingStudy": {"valid": n, "bad": [{"line": L, "reason": "..."}],
                                                  "blank": [L, ...]}, "DiagnosticReport": {...}}
                                (line numbers are 1-based physical lines; "blank" lines are the
                                empty and whitespace-only lines, which are skipped, not errors)

Every resource is a pure function of (seed, its index, N, M, K, P), so the output is the same on
every run, and --bad only inserts lines: the good lines are identical with or without it.

ImagingStudy i (1-based): id P+"st-%07d"; identifiers urn:dicom:uid "urn:oid:2.25.<int>" (the
integer derived from seed and i only) and an ACSN accession "ACC%08d"; subject Patient/pat-<k>
with about N/3 distinct patients. DiagnosticReport j: id P+"rpt-%07d", identifier
urn:oid:2.16.840.1.113883.19.5|RPT%08d; for j <= N it reports study j (same patient) and its
imagingStudy alternates literal / logical (identifier) / both references; for j > N it points
by identifier at a study UID that no study line has. presentedForm carries a base64 text/plain
report of about K bytes.

--bad inserts, spread through the middle of each file, one line of each kind of error (not JSON,
truncated JSON, JSON array, wrong resourceType, missing status, status outside the R4 value set,
no urn:dicom:uid identifier [ImagingStudy], invalid reference, invalid dateTime, missing code
[DiagnosticReport]) plus one empty and one whitespace-only line. Bad lines carry their own
business identifiers (BAD...), so a bad line wrongly accepted shows as an extra row.

--validate parses every good line back from the file with PyPI fhir.resources (R4B models) plus
the R4 rules those models do not enforce (ImagingStudy.status value set, timezone on a dateTime
with a time), and checks that every bad line really is rejected; exit 1 at the first surprise.
"""
import argparse
import base64
import bisect
import datetime as dt
import hashlib
import json
import os
import re
import sys
import time

DICOM_UID = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ACC_SYSTEM = "urn:oid:1.2.3.4.5.6"
RPT_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"
LOINC = "http://loinc.org"
SOURCE_TAG_SYSTEM = "http://example.org/source"

MODALITIES = ["CT", "MR", "US", "CR", "DX", "MG", "NM", "PT"]
MODALITY_DISPLAY = {
    "CT": "Computed Tomography", "MR": "Magnetic Resonance", "US": "Ultrasound",
    "CR": "Computed Radiography", "DX": "Digital Radiography", "MG": "Mammography",
    "NM": "Nuclear Medicine", "PT": "Positron emission tomography",
}
# Descriptions: non-ASCII, characters JSON must escape (quote, backslash, tab, newline), an
# astral-plane character, and U+2028 (valid raw inside a JSON string; NDJSON splits on \n only).
DESCRIPTIONS = [
    "CT Thorax mit KM",
    "Thorax – Übersicht",
    "Crâne",
    "头部 CT",
    "MR Knie \"rechts\" nativ",
    "Röntgen Hand li.\\re.",
    "US Abdomen\tkomplett",
    "Mammographie beidseits",
    "PET/CT Ganzkörper",
    "Radiographie pulmonaire de face",
    "Schädel-CT\nNachkontrolle",
    "Échographie rénale",
    "CT angiography \"run-off\" \\ legs",
    "腹部超音波检查",
    "MR Wirbelsäule 🦴 LWS",
    "Hals\u2028Weichteile",
    "Chest X-ray PA/lateral",
    "Szintigraphie Skelett",
]
CONCLUSIONS = [
    "Kein Hinweis auf Pneumothorax.",
    "Pas d'anomalie décelée.",
    "未见明显异常。",
    "No acute cardiopulmonary process.",
    "Unauffälliger Befund; Verlaufskontrolle in 6 Monaten empfohlen.",
    "Fracture non déplacée du radius distal.",
    "Small pleural effusion on the right, \"stable\" since prior.",
    "Degenerative changes L4/L5 – no stenosis.",
    "肺结节 6 mm，建议随访。",
    "BI-RADS 2: benign findings.",
]
SENTENCES = [
    "The lungs are clear without focal consolidation.",
    "Heart size is within normal limits.",
    "No pleural effusion or pneumothorax is seen.",
    "Die Lungen sind beidseits regelrecht belüftet.",
    "Keine Infiltrate, keine Ergüsse.",
    "Le médiastin est de taille normale.",
    "Absence d'épanchement pleural.",
    "双肺纹理清晰，未见实质性病变。",
    "心影大小形态正常。",
    "Mild degenerative changes of the thoracic spine.",
    "Compared with the prior examination, there is no significant interval change.",
    "Osseous structures are intact.",
    "Weichteile unauffällig – kein Fremdkörper.",
    "Technique: axial images were acquired with and without contrast.",
    "Impression pending correlation with clinical findings.",
    "Größenkonstante Raumforderung im Oberlappen rechts (12 × 9 mm).",
]
REPORT_CODES = {
    "generic": ("18748-4", "Diagnostic imaging study"),
    "CT": ("24627-2", "Chest CT"),
    "XR": ("36643-5", "XR Chest 2 Views"),
}
REPORT_STATUSES = ["preliminary", "amended", "corrected"]  # the rest are "final"
ZONES = [("Z", 0), ("+01:00", 60), ("+01:00", 60), ("+02:00", 120), ("-05:00", -300), ("+08:00", 480)]
EPOCH = dt.datetime(2012, 1, 1, tzinfo=dt.timezone.utc)
SPAN_SECONDS = int((dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc) - EPOCH).total_seconds())
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def digest(seed, kind, i, size=32):
    return hashlib.blake2b(f"{seed}/{kind}/{i}".encode(), digest_size=size).digest()


def u32(h, at):
    return int.from_bytes(h[at:at + 4], "big")


def study_uid(seed, i, kind="study"):
    """A DICOM UID under the 2.25 root (UUID-derived integer, at most 39 digits)."""
    return "2.25." + str(int.from_bytes(digest(seed, kind + "-uid", i, 16), "big") or 1)


def fmt_local(instant, zone):
    label, minutes = zone
    local = instant.astimezone(dt.timezone(dt.timedelta(minutes=minutes)))
    return local.strftime("%Y-%m-%dT%H:%M:%S") + label


class Generator:
    def __init__(self, args):
        self.seed = args.seed
        self.n = args.studies
        self.m = args.reports
        self.prefix = args.id_prefix
        self.text_bytes = args.report_text_bytes
        self.patients = max(1, (self.n or self.m) // 3)
        # Report body: byte slices of a long corpus, cut at sentence ends (valid UTF-8).
        corpus = bytearray()
        bounds = [0]
        rng = digest(self.seed, "corpus", 0)
        k = 0
        while len(corpus) < self.text_bytes + 65536:
            s = SENTENCES[(rng[k % len(rng)] + k * 7) % len(SENTENCES)]
            corpus += (s + (" " if k % 5 else "\n")).encode()
            bounds.append(len(corpus))
            k += 1
        self.corpus = bytes(corpus)
        self.bounds = bounds
        # Starts that leave room for `text_bytes` plus one sentence before the corpus ends.
        self.starts = bisect.bisect_right(bounds, len(corpus) - self.text_bytes - 512)

    # ---- ImagingStudy ------------------------------------------------------------------
    def study_facts(self, i):
        h = digest(self.seed, "study", i)
        patient = 1 + u32(h, 0) % self.patients
        started = EPOCH + dt.timedelta(seconds=u32(h, 4) % SPAN_SECONDS)
        zone = ZONES[h[8] % len(ZONES)]
        return h, patient, started, zone

    def study(self, i):
        h, patient, started, zone = self.study_facts(i)
        uid = study_uid(self.seed, i)
        mods = [MODALITIES[h[9] % len(MODALITIES)]]
        if h[10] % 5 == 0:
            second = MODALITIES[h[11] % len(MODALITIES)]
            if second != mods[0]:
                mods.append(second)
        series = 1 + h[12] % 12
        started_s = fmt_local(started, zone)
        if h[13] % 7 == 0:  # some with fractional seconds
            started_s = started_s[:19] + ".%03d" % (h[14] * 3) + started_s[19:]
        r = {"resourceType": "ImagingStudy", "id": f"{self.prefix}st-{i:07d}"}
        if h[15] % 6 == 0:
            r["meta"] = {"tag": [{"system": SOURCE_TAG_SYSTEM, "code": "legacy-pacs", "display": "Legacy PACS"}]}
        r["identifier"] = [
            {"system": DICOM_UID, "value": f"urn:oid:{uid}"},
            {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "system": ACC_SYSTEM, "value": f"ACC{i:08d}"},
        ]
        r["status"] = "available"
        r["modality"] = [{"system": DCM, "code": c, "display": MODALITY_DISPLAY[c]} for c in mods]
        r["subject"] = {"reference": f"Patient/pat-{patient}"}
        r["started"] = started_s
        r["numberOfSeries"] = series
        r["numberOfInstances"] = series * (1 + h[16] % 200)
        r["description"] = DESCRIPTIONS[h[17] % len(DESCRIPTIONS)]
        return r, mods[0]

    # ---- DiagnosticReport ----------------------------------------------------------------
    def report_text(self, h, j, header, footer):
        want = max(0, self.text_bytes - len(header) - len(footer))
        start = self.bounds[u32(h, 20) % self.starts]
        end = self.bounds[bisect.bisect_left(self.bounds, start + want)]
        return header + self.corpus[start:end] + footer

    def report(self, j):
        h = digest(self.seed, "report", j)
        if j <= self.n:
            _, patient, started, zone = self.study_facts(j)
            study, modality = self.study(j)
            study_id = study["id"]
            uid = study_uid(self.seed, j)
            shape = j % 3  # 1 literal, 2 logical, 0 both
        else:
            patient = 1 + u32(h, 0) % self.patients
            started = EPOCH + dt.timedelta(seconds=u32(h, 4) % SPAN_SECONDS)
            zone = ZONES[h[8] % len(ZONES)]
            modality = MODALITIES[h[9] % len(MODALITIES)]
            study_id = None
            uid = study_uid(self.seed, j, "orphan")  # no study line has it
            shape = 2
        code = REPORT_CODES["CT" if modality == "CT" and h[1] % 2 else "XR" if modality in ("CR", "DX") else "generic"]
        effective = started + dt.timedelta(minutes=20 + h[10] % 240)
        issued = effective + dt.timedelta(minutes=30 + u32(h, 11) % 2880)
        issued_s = issued.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        issued_s += (".%03dZ" % (h[15] * 3)) if h[15] % 2 else "Z"
        status = REPORT_STATUSES[h[16] % 3] if h[17] % 100 < 15 else "final"
        conclusion = CONCLUSIONS[h[18] % len(CONCLUSIONS)]
        header = (f"RADIOLOGY REPORT\nReport: RPT{j:08d}\nPatient: pat-{patient}\n"
                  f"Exam: {code[1]} ({modality})\n\nFINDINGS:\n").encode()
        footer = f"\n\nIMPRESSION:\n{conclusion}\n".encode()
        text = self.report_text(h, j, header, footer)

        r = {"resourceType": "DiagnosticReport", "id": f"{self.prefix}rpt-{j:07d}"}
        if h[19] % 10 == 0:
            r["meta"] = {"tag": [{"system": SOURCE_TAG_SYSTEM, "code": "legacy-ris"}]}
        r["identifier"] = [{"system": RPT_SYSTEM, "value": f"RPT{j:08d}"}]
        if h[2] % 2 == 0:
            r["basedOn"] = [{"reference": f"ServiceRequest/ord-{j}"}]
        r["status"] = status
        r["category"] = [{"coding": [{"system": LOINC, "code": "LP29684-5", "display": "Radiology"}]}]
        r["code"] = {"coding": [{"system": LOINC, "code": code[0], "display": code[1]}], "text": code[1]}
        r["subject"] = {"reference": f"Patient/pat-{patient}"}
        r["effectiveDateTime"] = fmt_local(effective, zone)
        r["issued"] = issued_s
        if h[3] % 3 == 0:
            r["resultsInterpreter"] = [{"display": "Dr. Zoë Müller-Lüdenscheidt"}]
        logical = {"identifier": {"system": DICOM_UID, "value": f"urn:oid:{uid}"}}
        if shape == 1:
            r["imagingStudy"] = [{"reference": f"ImagingStudy/{study_id}"}]
        elif shape == 2:
            r["imagingStudy"] = [logical]
        else:
            r["imagingStudy"] = [{"reference": f"ImagingStudy/{study_id}", **logical}]
        r["conclusion"] = conclusion
        r["presentedForm"] = [{"contentType": "text/plain; charset=utf-8", "language": "en",
                               "data": base64.b64encode(text).decode("ascii"),
                               "title": "Report"}]
        return r

    # ---- bad lines -----------------------------------------------------------------------
    def bad_lines(self, kind):
        """[(text, reason)] for one file; each bad resource has its own BAD identifiers."""
        if kind == "ImagingStudy":
            def base(k):
                r, _ = self.study(1)
                r["id"] = f"{self.prefix}bad-st-{k}"
                r["identifier"][0]["value"] = "urn:oid:" + study_uid(self.seed, k, "bad")
                r["identifier"][1]["value"] = f"BADACC{k:05d}"
                r.pop("meta", None)
                return r
        else:
            def base(k):
                r = self.report(self.m + 1)  # an orphan-shaped report, renamed
                r["id"] = f"{self.prefix}bad-rpt-{k}"
                r["identifier"][0]["value"] = f"BADRPT{k:05d}"
                r.pop("meta", None)
                return r
        dump = lambda r: json.dumps(r, ensure_ascii=False, separators=(",", ":"))
        out = [("this is not JSON at all {", "not JSON")]
        full = dump(base(2))
        out.append((full[: len(full) // 2], "truncated JSON"))
        out.append(("[" + dump(base(3)) + "]", "JSON array, not an object"))
        if kind == "ImagingStudy":
            wrong = {"resourceType": "Patient", "id": f"{self.prefix}bad-pat-4", "active": True,
                     "identifier": [{"system": "urn:oid:1.2.3.4.9", "value": "BADPAT4"}],
                     "name": [{"family": "Müller", "given": ["Jörg"]}], "birthDate": "1970-01-01"}
            out.append((dump(wrong), "wrong resourceType Patient"))
        else:
            wrong = {"resourceType": "Observation", "id": f"{self.prefix}bad-obs-4", "status": "final",
                     "identifier": [{"system": RPT_SYSTEM, "value": "BADOBS4"}],
                     "code": {"coding": [{"system": LOINC, "code": "18748-4"}]},
                     "subject": {"reference": "Patient/pat-1"}}
            out.append((dump(wrong), "wrong resourceType Observation"))
        r = base(5)
        del r["status"]
        out.append((dump(r), "missing status"))
        r = base(6)
        r["status"] = "final" if kind == "ImagingStudy" else "available"  # valid for the other type
        out.append((dump(r), f"status {r['status']!r} not in the R4 value set"))
        if kind == "ImagingStudy":
            r = base(7)
            r["identifier"] = r["identifier"][1:]
            out.append((dump(r), "no urn:dicom:uid identifier"))
        r = base(8)
        r["subject"] = {"reference": "not a reference"}
        out.append((dump(r), "invalid reference"))
        r = base(9)
        if kind == "ImagingStudy":
            r["started"] = "2019-13-45T25:61:00Z"
        else:
            r["effectiveDateTime"] = "04/03/2015 10:00"
        out.append((dump(r), "invalid dateTime"))
        if kind == "DiagnosticReport":
            r = base(10)
            del r["code"]
            out.append((dump(r), "missing code"))
        return out


def write_file(path, kind, count, make, bad):
    """Streams one NDJSON file; returns its expected.json entry."""
    dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    specials = []
    if bad:
        specials = [(text, reason) for text, reason in bad] + [("", None), (" \t  ", None)]
        # Interleave the blank lines with the errors, then spread them all over the middle.
        specials = specials[:3] + [specials[-2]] + specials[3:-2] + [specials[-1]]
    slots = len(specials)
    after = [count * (s + 1) // (slots + 1) for s in range(slots)]
    expected = {"valid": count, "bad": [], "blank": []}
    line = 0
    s = 0
    with open(path, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as f:
        w = f.write
        for i in range(0, count + 1):
            if i:
                w(dump(make(i)))
                w("\n")
                line += 1
            while s < slots and after[s] == i:
                text, reason = specials[s]
                w(text)
                w("\n")
                line += 1
                if reason is None:
                    expected["blank"].append(line)
                else:
                    expected["bad"].append({"line": line, "reason": reason})
                s += 1
    return expected


# ---- --validate ------------------------------------------------------------------------------
STUDY_STATUSES = {"registered", "available", "cancelled", "entered-in-error", "unknown"}
REPORT_STATUSES_R4 = {"registered", "partial", "preliminary", "final", "amended", "corrected",
                      "appended", "cancelled", "entered-in-error", "unknown"}
DATETIME = re.compile(r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
                      r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$")
REFERENCE = re.compile(r"^(#.*|(https?://\S+/)?[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?|urn:(uuid|oid):\S+)$")
DATETIME_FIELDS = {"started", "effectiveDateTime", "issued"}


def extra_problems(kind, r):
    """R4 rules that the fhir.resources models do not enforce, and the importer's own rules."""
    problems = []
    statuses = STUDY_STATUSES if kind == "ImagingStudy" else REPORT_STATUSES_R4
    if r.get("status") not in statuses:
        problems.append(f"status {r.get('status')!r} not in the value set")
    if kind == "ImagingStudy" and not any(
            i.get("system") == DICOM_UID and str(i.get("value", "")).startswith("urn:oid:") for i in r.get("identifier", [])):
        problems.append("no urn:dicom:uid identifier")
    if kind == "DiagnosticReport" and "code" not in r:
        problems.append("missing code")

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "reference" and isinstance(value, str) and not REFERENCE.match(value):
                    problems.append(f"{path}.reference {value!r} is not a reference")
                if key in DATETIME_FIELDS and isinstance(value, str) and not DATETIME.match(value):
                    problems.append(f"{path}.{key} {value!r} is not a FHIR dateTime with timezone")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for n, item in enumerate(node):
                walk(item, f"{path}[{n}]")
    walk(r, kind)
    return problems


def validate(out_dir, expected):
    try:
        from fhir.resources.R4B.diagnosticreport import DiagnosticReport
        from fhir.resources.R4B.imagingstudy import ImagingStudy
    except ImportError as error:
        sys.exit(f"--validate needs PyPI fhir.resources (e.g. /var/tmp/radiology-test-venv/bin/python): {error}")
    models = {"ImagingStudy": ImagingStudy, "DiagnosticReport": DiagnosticReport}

    def parse(model, d):
        fn = getattr(model, "model_validate", None) or model.parse_obj
        return fn(d)

    def rejected(kind, text):
        """Why a line is not an importable resource of `kind`, or None if it is one."""
        try:
            d = json.loads(text)
        except ValueError as error:
            return f"not JSON: {error}"
        if not isinstance(d, dict):
            return "not an object"
        if d.get("resourceType") != kind:
            return f"resourceType {d.get('resourceType')!r}"
        try:
            parse(models[kind], d)
        except Exception as error:  # noqa: BLE001 - any validation failure
            return str(error).replace("\n", " | ")
        problems = extra_problems(kind, d)
        return "; ".join(problems) if problems else None

    for kind, exp in expected.items():
        bad = {b["line"]: b["reason"] for b in exp["bad"]}
        blank = set(exp["blank"])
        good = 0
        with open(os.path.join(out_dir, f"{kind}.ndjson"), "rb") as f:
            for number, raw in enumerate(f, 1):
                assert raw.endswith(b"\n"), f"{kind}.ndjson:{number}: no \\n line end"
                text = raw[:-1].decode("utf-8")
                if number in blank:
                    assert text.strip() == "", f"{kind}.ndjson:{number}: expected blank"
                    continue
                why = rejected(kind, text)
                if number in bad:
                    if why is None:
                        print(f"{kind}.ndjson:{number}: bad line ({bad[number]}) passes validation:\n{text}")
                        sys.exit(1)
                    continue
                if why is not None:
                    print(f"{kind}.ndjson:{number}: {why}\n{text}")
                    sys.exit(1)
                good += 1
        if good != exp["valid"]:
            print(f"{kind}.ndjson: {good} good lines, expected.json says {exp['valid']}")
            sys.exit(1)
        print(f"validated {kind}.ndjson: {good} good, {len(bad)} bad rejected, {len(blank)} blank",
              file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--studies", type=int, required=True, help="number of ImagingStudy resources")
    p.add_argument("--reports", type=int, required=True, help="number of DiagnosticReport resources")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bad", action="store_true", help="insert invalid and blank lines (see expected.json)")
    p.add_argument("--validate", action="store_true", help="check every line with fhir.resources")
    p.add_argument("--report-text-bytes", type=int, default=600, help="size of each report text (default 600)")
    p.add_argument("--id-prefix", default="hist-", help='resource id prefix (default "hist-")')
    args = p.parse_args()
    if args.studies < 0 or args.reports < 0 or args.report_text_bytes < 0:
        p.error("counts must be >= 0")
    longest = f"{args.id_prefix}bad-rpt-{max(args.studies, args.reports, 10):07d}"
    if not FHIR_ID.match(longest):
        p.error(f"--id-prefix {args.id_prefix!r} does not make FHIR ids ([A-Za-z0-9-.]{{1,64}})")

    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    g = Generator(args)
    expected = {
        "ImagingStudy": write_file(os.path.join(args.out, "ImagingStudy.ndjson"), "ImagingStudy", args.studies,
                                   lambda i: g.study(i)[0], g.bad_lines("ImagingStudy") if args.bad else None),
        "DiagnosticReport": write_file(os.path.join(args.out, "DiagnosticReport.ndjson"), "DiagnosticReport",
                                       args.reports, g.report, g.bad_lines("DiagnosticReport") if args.bad else None),
    }
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    sizes = {k: os.path.getsize(os.path.join(args.out, f"{k}.ndjson")) for k in expected}
    print(f"wrote {args.studies} ImagingStudy ({sizes['ImagingStudy'] / 2**20:.1f} MiB), "
          f"{args.reports} DiagnosticReport ({sizes['DiagnosticReport'] / 2**20:.1f} MiB) to {args.out} "
          f"in {time.monotonic() - started:.1f} s", file=sys.stderr)
    if args.validate:
        validate(args.out, expected)


if __name__ == "__main__":
    main()
