#!/usr/bin/env bash
# Seed corpora for the fuzz targets (scripts/fuzz.sh runs this first; it can also run alone).
#
#   fuzz/corpus/<target>/seed-*   committed, written only when the target's corpus folder is empty:
#       nifti              synthetic NIfTI-1/-2 files (int16, uint8, float32 with scaling, big-endian,
#                          sform / qform / pixdim only, an extension, single- and multi-member gzip)
#       dicom_file         enhanced multi-frame files made of the committed synthetic fixtures
#                          (services/ingest/tests/fixtures/transfer-syntaxes: 3 slices per transfer
#                          syntax become one 3-frame file), and single slices
#       dicom_zip          zips of those fixture series, and one with junk, a folder and a '..' entry
#       s3_event           S3 notification bodies: ObjectCreated (URL-encoded keys), s3:TestEvent,
#                          several records, the embedded store's job outputs, bad keys
#       websocket_message  the client messages of services/notify/src/protocol.rs, and bad ones
#   fuzz/seeds/<target>/          NOT committed (fuzz/.gitignore), written when the folder is empty, from
#       the real files in ../shared/data/totalseg (skipped with a message when absent; its NOTICE.md
#       says not to copy them into the repository): the whole example_ct_sm.nii.gz and
#       example_seg.nii.gz, the first 64 KiB of the CT, its decompressed header + 4 KiB, a complete
#       8x8x4 cut of it; one real JPEG 2000 slice, the first two slices as one enhanced
#       multi-frame file, and a zip of them (two slices: the smallest volume; each is 512x512).
#       fuzz.sh hands this folder to libFuzzer as a second, read-only corpus folder, so new inputs
#       found from it land in fuzz/corpus/<target>.
#
# Environment: IRIS_FUZZ_DATA  the real files (default ../shared/data/totalseg beside the repo)
set -euo pipefail
# shellcheck source=env.sh source-path=SCRIPTDIR disable=SC1091
source "$(dirname "$0")/env.sh"
cd "$IRIS_ROOT"
DATA="${IRIS_FUZZ_DATA:-$IRIS_ROOT/../shared/data/totalseg}"
if ! command -v python3 >/dev/null 2>&1; then
    echo "error: python3 not found; it writes the seed corpora." >&2
    exit 2
fi
if [[ ! -d "$DATA" ]]; then
    echo "fuzz-seed: $DATA is absent: no seeds from the real files (the committed corpora are still used)" >&2
fi

python3 - "$IRIS_ROOT" "$DATA" <<'PY'
import gzip
import io
import json
import struct
import sys
import zipfile
from pathlib import Path

root, data = Path(sys.argv[1]), Path(sys.argv[2])
corpus, seeds = root / "fuzz" / "corpus", root / "fuzz" / "seeds"
fixtures = root / "services" / "ingest" / "tests" / "fixtures" / "transfer-syntaxes"
TARGETS = ["nifti", "dicom_file", "dicom_zip", "s3_event", "websocket_message"]


def empty(folder):
    return not folder.is_dir() or not any(folder.iterdir())


def writer(folder, what):
    """A function writing named seeds into `folder`, or None when the folder already has files."""
    if not empty(folder):
        print(f"fuzz-seed: {folder.relative_to(root)} is not empty: left as is", file=sys.stderr)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    count = [0]

    def write(name, body):
        if isinstance(body, str):
            body = body.encode()
        (folder / name).write_bytes(body)
        count[0] += 1

    write.count = count
    print(f"fuzz-seed: writing {what} into {folder.relative_to(root)}", file=sys.stderr)
    return write


def gz(body):
    # mtime 0: the same bytes on every run.
    return gzip.compress(body, mtime=0)


def zipped(entries, method=zipfile.ZIP_DEFLATED):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, body in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            archive.writestr(info, body)
    return out.getvalue()


# ---------------------------------------------------------------- NIfTI

def hounsfield(i, j, k):
    return -1000 + 37 * i + 101 * j + 503 * k


def nifti1(dims, datatype, values, *, order="<", sform=None, qform=None, pixdim=(1.0, 1.0, 1.0),
           slope=0.0, inter=0.0, extension=b"", rank=3):
    """A NIfTI-1 single file (.nii): 348-byte header, extension flag and extensions, voxels."""
    codes = {2: ("B", 8), 4: ("h", 16), 8: ("i", 32), 16: ("f", 32), 64: ("d", 64), 512: ("H", 16)}
    fmt, bitpix = codes[datatype]
    header = bytearray(348)
    dim = [rank] + list(dims) + [1] * (7 - len(dims))
    offset = 352 + len(extension)
    struct.pack_into(order + "i", header, 0, 348)
    struct.pack_into(order + "8h", header, 40, *dim)
    struct.pack_into(order + "hh", header, 70, datatype, bitpix)
    struct.pack_into(order + "8f", header, 76, 1.0, *pixdim, 0.0, 0.0, 0.0, 0.0)
    struct.pack_into(order + "fff", header, 108, float(offset), slope, inter)
    header[123] = 2  # millimetres
    header[148:148 + 15] = b"iris fuzz seed\0"
    if qform is not None:
        code, (b, c, d), origin = qform
        struct.pack_into(order + "h", header, 252, code)
        struct.pack_into(order + "6f", header, 256, b, c, d, *origin)
    if sform is not None:
        code, rows = sform
        struct.pack_into(order + "h", header, 254, code)
        struct.pack_into(order + "12f", header, 280, *[v for row in rows for v in row])
    header[344:348] = b"n+1\0"
    flag = b"\x01\0\0\0" if extension else b"\0\0\0\0"
    return bytes(header) + flag + extension + struct.pack(order + str(len(values)) + fmt, *values)


def nifti2(dims, values):
    """A NIfTI-2 single file: 540-byte header, extension flag, int16 voxels, sform."""
    header = bytearray(540)
    struct.pack_into("<i", header, 0, 540)
    header[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<hh", header, 12, 4, 16)
    struct.pack_into("<8q", header, 16, 3, *dims, 1, 1, 1, 1)
    struct.pack_into("<8d", header, 104, 1.0, 0.7, 0.7, 2.0, 0, 0, 0, 0)
    struct.pack_into("<q", header, 168, 544)
    struct.pack_into("<ii", header, 344, 0, 2)
    struct.pack_into("<12d", header, 400, 0.7, 0, 0, -10, 0, 0.7, 0, -20, 0, 0, 2.0, -30)
    struct.pack_into("<i", header, 500, 2)
    return bytes(header) + b"\0\0\0\0" + struct.pack(f"<{len(values)}h", *values)


def synthetic_nifti(write):
    d3 = (8, 6, 4)
    hu = [hounsfield(i, j, k) for k in range(d3[2]) for j in range(d3[1]) for i in range(d3[0])]
    ras = (1, [(0.8, 0, 0, -3.2), (0, 0.8, 0, -2.4), (0, 0, 2.5, 10.0)])
    int16 = nifti1(d3, 4, hu, sform=ras, qform=(1, (0.0, 0.0, 0.0), (-3.2, -2.4, 10.0)),
                   pixdim=(0.8, 0.8, 2.5))
    write("seed-int16-sform.nii", int16)
    write("seed-int16-sform.nii.gz", gz(int16))
    # Two gzip members (as pigz and the pipeline's own writer produce them).
    write("seed-int16-two-members.nii.gz", gz(int16[:400]) + gz(int16[400:]))
    labels = [(i + j + k) % 5 for k in range(4) for j in range(6) for i in range(8)]
    write("seed-uint8-qform-lps.nii.gz", gz(nifti1(d3, 2, labels, qform=(1, (0.0, 0.0, 1.0), (5.0, 4.0, 0.0)))))
    d2 = (6, 5, 4)
    small = [hounsfield(i, j, k) for k in range(4) for j in range(5) for i in range(6)]
    write("seed-float32-scaled-pixdim.nii",
          nifti1(d2, 16, [(v + 1024) / 2 for v in small], slope=2.0, inter=-1024.0, pixdim=(1.5, 1.5, 3.0)))
    oblique = (2, [(0.9, 0.1, 0, 1.0), (-0.1, 0.9, 0, 2.0), (0, 0, 3.0, 3.0)])
    write("seed-int16-big-endian-oblique.nii", nifti1(d2, 4, small, order=">", sform=oblique))
    write("seed-uint16-4d-one-volume.nii.gz",
          gz(nifti1(d2 + (1,), 512, [v + 1024 for v in small], rank=4, sform=ras)))
    write("seed-float64-extension.nii",
          nifti1(d2, 64, small, sform=ras, extension=struct.pack("<ii", 24, 6) + b"iris fuzz\0".ljust(16, b"\0")))
    write("seed-int16-nifti2.nii", nifti2(d2, small))


def real_nifti(write):
    ct = (data / "example_ct_sm.nii.gz").read_bytes()
    write("real-example_ct_sm.nii.gz", ct)
    write("real-example_seg.nii.gz", (data / "example_seg.nii.gz").read_bytes())
    write("real-example_ct_sm-first-64KiB.nii.gz", ct[:64 << 10])
    raw = gzip.decompress(ct)
    write("real-example_ct_sm-header-and-4KiB.nii", raw[:352 + (4 << 10)])
    # A complete 8x8x4 cut: the real header with its dims changed, a block of the real voxels.
    dims = struct.unpack_from("<8h", raw, 40)
    offset = int(struct.unpack_from("<f", raw, 108)[0])
    nx, ny = dims[1], dims[2]
    voxels = b"".join(
        raw[offset + 2 * ((k + 13) * nx * ny + (j + 40) * nx + 50): offset + 2 * ((k + 13) * nx * ny + (j + 40) * nx + 58)]
        for k in range(4) for j in range(8))
    header = bytearray(raw[:352])
    struct.pack_into("<8h", header, 40, 3, 8, 8, 4, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    cut = bytes(header) + voxels
    write("real-example_ct_sm-8x8x4.nii", cut)
    write("real-example_ct_sm-8x8x4.nii.gz", gz(cut))


# ---------------------------------------------------------------- DICOM

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
PIXEL_DATA, NUMBER_OF_FRAMES = (0x7FE0, 0x0010), (0x0028, 0x0008)
POSITION, ORIENTATION, SPACING = (0x0020, 0x0032), (0x0020, 0x0037), (0x0028, 0x0030)
SHARED_GROUPS, PER_FRAME_GROUPS = (0x5200, 0x9229), (0x5200, 0x9230)
PLANE_POSITION, PLANE_ORIENTATION, PIXEL_MEASURES = (0x0020, 0x9113), (0x0020, 0x9116), (0x0028, 0x9110)


class Dicom:
    """A Part 10 file (explicit or implicit VR little endian): its meta group kept as bytes, its
    top-level data elements as (tag, vr, value bytes or None for undefined length, raw element)."""

    def __init__(self, body):
        if body[128:132] != b"DICM":
            raise ValueError("no DICM prefix")
        position, meta_end, syntax = 132, None, None
        while position < len(body):
            group, element, vr = *struct.unpack_from("<HH", body, position), body[position + 4:position + 6]
            if group != 2:
                break
            long = vr in LONG_VRS
            length = struct.unpack_from("<I" if long else "<H", body, position + (8 if long else 6))[0]
            value_at = position + (12 if long else 8)
            if element == 0x0010:
                syntax = body[value_at:value_at + length].rstrip(b"\0 ").decode()
            position = value_at + length
            meta_end = position
        self.meta, self.syntax = body[:meta_end], syntax
        if syntax not in (IMPLICIT,) and not self.explicit_vr_dataset(syntax):
            raise ValueError(f"data set encoding of {syntax} not handled here")
        self.explicit = syntax != IMPLICIT
        self.elements = []
        while position < len(body):
            start = position
            tag = struct.unpack_from("<HH", body, position)
            vr, length, position = self.element_header(body, position)
            if length == 0xFFFFFFFF:
                position = self.skip_undefined(body, position, vr)
                self.elements.append((tag, vr, None, body[start:position]))
            else:
                self.elements.append((tag, vr, body[position:position + length], body[start:position + length]))
                position += length

    @staticmethod
    def explicit_vr_dataset(syntax):
        # Deflated explicit VR (…1.2.1.99) and big endian (…1.2.2) are not rewritten here.
        return syntax == EXPLICIT or (syntax.startswith("1.2.840.10008.1.2.") and syntax not in
                                      ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"))

    def element_header(self, body, position):
        if not self.explicit:
            return None, struct.unpack_from("<I", body, position + 4)[0], position + 8
        vr = body[position + 4:position + 6]
        if vr in LONG_VRS:
            return vr, struct.unpack_from("<I", body, position + 8)[0], position + 12
        return vr, struct.unpack_from("<H", body, position + 6)[0], position + 8

    def skip_undefined(self, body, position, vr):
        """Past an undefined-length sequence or encapsulated pixel data (items up to the delimiter)."""
        while True:
            group, element, length = struct.unpack_from("<HHI", body, position)
            position += 8
            if (group, element) == (0xFFFE, 0xE0DD):
                return position
            if length != 0xFFFFFFFF:
                position += length
                continue
            while True:  # an undefined-length item: elements up to the item delimiter
                group, element = struct.unpack_from("<HH", body, position)
                if (group, element) == (0xFFFE, 0xE00D):
                    position += 8
                    break
                inner_vr, inner, position = self.element_header(body, position)
                position = self.skip_undefined(body, position, inner_vr) if inner == 0xFFFFFFFF else position + inner

    def fragments(self):
        """The compressed frame of a single-frame encapsulated file (its fragments joined)."""
        raw = self.get_raw(PIXEL_DATA)
        position, parts = 12, []
        while True:
            group, element, length = struct.unpack_from("<HHI", raw, position)
            position += 8
            if (group, element) == (0xFFFE, 0xE0DD):
                return b"".join(parts[1:])  # parts[0] is the basic offset table
            parts.append(raw[position:position + length])
            position += length

    def get(self, tag):
        return next((e for e in self.elements if e[0] == tag), None)

    def get_raw(self, tag):
        return self.get(tag)[3]

    def value(self, tag):
        return self.get(tag)[2]

    def encapsulated(self):
        return self.get(PIXEL_DATA)[2] is None

    # Writing
    def element(self, tag, vr, value):
        if len(value) % 2:
            value += b"\0" if vr in (b"UI", b"OB") else b" "
        head = struct.pack("<HH", *tag)
        if not self.explicit:
            return head + struct.pack("<I", len(value)) + value
        if vr in LONG_VRS:
            return head + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        return head + vr + struct.pack("<H", len(value)) + value

    def sequence(self, tag, items):
        body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item for item in items)
        return self.element(tag, b"SQ", body)

    def write(self, replaced, dropped=()):
        """The file with `replaced` {tag: raw element} put in (or added) and `dropped` tags removed."""
        out = {tag: raw for tag, _, _, raw in self.elements if tag not in dropped}
        out.update(replaced)
        return self.meta + b"".join(out[tag] for tag in sorted(out))


def multiframe(paths, shared_geometry=True):
    """One enhanced multi-frame file from single-slice files of one series: positions in the
    per-frame functional groups, orientation and spacing shared (or left at the top level)."""
    slices = [Dicom(path.read_bytes()) for path in paths]
    first = slices[0]
    if first.encapsulated():
        body = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
        for frame in (s.fragments() for s in slices):
            frame += b"\0" * (len(frame) % 2)
            body += struct.pack("<HHI", 0xFFFE, 0xE000, len(frame)) + frame
        body += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        pixels = struct.pack("<HH", *PIXEL_DATA) + (b"OB\0\0" if first.explicit else b"") + b"\xff\xff\xff\xff" + body
    else:
        pixels = first.element(PIXEL_DATA, first.get(PIXEL_DATA)[1] or b"OW", b"".join(s.value(PIXEL_DATA) for s in slices))
    per_frame = [first.sequence(PLANE_POSITION, [first.element(POSITION, b"DS", s.value(POSITION).rstrip(b" \0"))])
                 for s in slices]
    replaced = {
        NUMBER_OF_FRAMES: first.element(NUMBER_OF_FRAMES, b"IS", str(len(slices)).encode()),
        PER_FRAME_GROUPS: first.sequence(PER_FRAME_GROUPS, per_frame),
        PIXEL_DATA: pixels,
    }
    dropped = [POSITION]
    if shared_geometry:
        replaced[SHARED_GROUPS] = first.sequence(SHARED_GROUPS, [
            first.sequence(PLANE_ORIENTATION, [first.get_raw(ORIENTATION)])
            + first.sequence(PIXEL_MEASURES, [first.get_raw(SPACING)])])
        dropped += [ORIENTATION, SPACING]
    return first.write(replaced, dropped)


def fixture_series():
    """(name, [IM1, IM2, IM3 paths]) of each committed fixture series."""
    if not fixtures.is_dir():
        return []
    return [(folder.name, sorted(folder.glob("IM*.dcm"))) for folder in sorted(fixtures.iterdir()) if folder.is_dir()]


def synthetic_dicom_file(write):
    for name, paths in fixture_series():
        try:
            write(f"seed-multiframe-{name}.dcm", multiframe(paths))
        except (ValueError, struct.error, TypeError) as error:
            print(f"fuzz-seed: no multi-frame seed from {name}: {error}", file=sys.stderr)
    series = dict(fixture_series())
    if "jpeg2000-lossless" in series:
        bare = multiframe(series["jpeg2000-lossless"], shared_geometry=False)
        write("seed-multiframe-top-level-geometry-jpeg2000-lossless.dcm", bare)
        write("seed-multiframe-no-preamble-jpeg2000-lossless.dcm", bare[128:])
    for name in ("implicit-little-endian", "jpeg2000"):
        if name in series:
            write(f"seed-single-slice-{name}.dcm", series[name][0].read_bytes())


def synthetic_dicom_zip(write):
    for name, paths in fixture_series():
        write(f"seed-series-{name}.zip", zipped([(f"series/{p.name}", p.read_bytes()) for p in paths]))
    series = dict(fixture_series())
    if "implicit-little-endian" in series:
        paths = series["implicit-little-endian"]
        entries = [("scan/", b""), ("scan/README.txt", b"not DICOM\n"), ("../escape.dcm", paths[0].read_bytes())]
        entries += [(f"scan/{p.name}", p.read_bytes()) for p in paths]
        write("seed-series-stored-with-junk.zip", zipped(entries, zipfile.ZIP_STORED))


def real_dicom_file(write):
    paths = sorted((data / "example_ct_dicom").iterdir())
    write("real-slice.dcm", paths[0].read_bytes())
    write("real-multiframe-2-slices.dcm", multiframe(paths[:2]))


def real_dicom_zip(write):
    paths = sorted((data / "example_ct_dicom").iterdir())
    write("real-2-slices.zip", zipped([(f"series/{p.name}", p.read_bytes()) for p in paths[:2]], zipfile.ZIP_STORED))


# ---------------------------------------------------------------- S3 events, WebSocket messages

def record(key, event="ObjectCreated:Put", *, bucket="iris-uploads", version=None, time="2024-05-01T12:34:56.789Z"):
    obj = {"key": key, "size": 483312, "eTag": "\"0123456789abcdef0123456789abcdef\"", "sequencer": "0065F1A2B3C4D5E6F7"}
    if version:
        obj["versionId"] = version
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-1", "eventTime": time,
        "eventName": event, "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "192.0.2.1"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "uploads-to-ingest",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": obj},
    }


def s3_events(write):
    job = "0123456789abcdef0123456789abcdef"
    write("seed-created-url-encoded-key.json",
          json.dumps({"Records": [record("uploads/alice/my+scan%28v2%29.nii.gz")]}))
    write("seed-test-event.json", json.dumps(
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2024-05-01T12:00:00.000Z",
         "Bucket": "iris-uploads", "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4"}))
    write("seed-several-records.json", json.dumps({"Records": [
        record("uploads/bob/%C3%BCber+%2B+scan.zip", "ObjectCreated:CompleteMultipartUpload", version="3HL4kqtJlcpXroDTDmJ"),
        record("uploads/bob/old.dcm", "ObjectRemoved:Delete"),
        record(f"jobs/{job}/volume.nii.gz", "ObjectCreated:Copy", time="2024-05-01T12:34:56+02:00"),
    ]}, indent=2))
    write("seed-embedded-store-volume.json", json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "local", "eventTime": "2024-05-01T12:34:56.789Z",
        "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "volume-to-segment",
               "bucket": {"name": "iris", "arn": "arn:aws:s3:::iris"},
               "object": {"key": f"jobs/{job}/volume.nii.gz", "size": 10, "eTag": "abc", "sequencer": "000000000000002A"}}}]}))
    write("seed-bad-key-encoding.json", json.dumps({"Records": [record("uploads/alice/%FF%FE.nii")]}))
    write("seed-escaping-key.json", json.dumps({"Records": [record("uploads/alice/..%2F..%2Fetc%2Fpasswd")]}))
    write("seed-no-records.json", '{"Records":[]}')


def websocket_messages(write):
    job = "0123456789abcdef0123456789abcdef"
    write("seed-subscribe.json", json.dumps({"action": "subscribe", "jobId": job}))
    write("seed-unsubscribe.json", json.dumps({"action": "unsubscribe", "jobId": job}))
    write("seed-list.json", '{"action":"list"}')
    write("seed-list-extra-fields.json", '{"action":"list","jobId":null,"x":[1,2.5e3,true,{"y":"\\u00fc"}]}')
    write("seed-subscribe-without-job.json", '{"action":"subscribe"}')
    write("seed-unknown-action.json", '{"action":"sendmessage","data":"hi"}')
    write("seed-not-json.txt", "subscribe " + job)


def run(target, place, what, make):
    write = writer(place / target, what)
    if write:
        make(write)
        print(f"fuzz-seed: {write.count[0]} seeds in {(place / target).relative_to(root)}", file=sys.stderr)


run("nifti", corpus, "synthetic NIfTI files", synthetic_nifti)
run("dicom_file", corpus, "multi-frame files made of the committed DICOM fixtures", synthetic_dicom_file)
run("dicom_zip", corpus, "zips of the committed DICOM fixture series", synthetic_dicom_zip)
run("s3_event", corpus, "S3 notification bodies", s3_events)
run("websocket_message", corpus, "WebSocket client messages", websocket_messages)
if data.is_dir():
    run("nifti", seeds, f"seeds from {data}", real_nifti)
    run("dicom_file", seeds, f"seeds from {data}", real_dicom_file)
    run("dicom_zip", seeds, f"seeds from {data}", real_dicom_zip)
for target in TARGETS:
    (seeds / target).mkdir(parents=True, exist_ok=True)
PY
