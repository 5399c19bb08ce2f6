"""Synthetic bilingual manifests (the shapes world) and a local HTTP server for them.

`write_synth(DIR, n, seed, base_url, broken=K)` writes DIR/images/* (PNG and JPEG) and
DIR/manifest.parquet whose URLs point at `base_url` (served by `serve(DIR, port)` on 127.0.0.1).
With broken=K it adds K rows of each broken kind, so the download/filter funnel has something to
count: see BROKEN_KINDS for where each kind must end up.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from iap import shapes

# broken kind -> the funnel stage that must catch it
BROKEN_KINDS = {
    "missing": "download: http_error",  # URL gives 404
    "corrupt": "download: corrupt_image",  # bytes that are not an image
    "tiny": "download: too_small",  # 8x8 image, under the download's min_image_size
    "slow": "download: timeout",  # the server stalls longer than the download timeout
    "empty_zh": "filter: missing_caption",
    "english_in_zh": "filter: zh_not_chinese",
    "dup_image": "filter: duplicate_image",  # same image bytes and captions as a good row
    "boilerplate": "filter: boilerplate",  # another image, a caption that is only a gallery page's phrase
}
SLOW_SECONDS = 4.0
TRICKLE_SECONDS_PER_BYTE = 0.02  # /trickle/<path>: the file, one byte at a time (a whole-request timeout test)


def _row(key: str, url: str, sample: shapes.Sample, broken: str = "") -> dict:
    r = sample.record()
    return {"key": key, "url": url, "caption_zh": r["caption_zh"], "caption_en": r["caption_en"],
            "combo": r["combo"], "broken": broken}


def write_synth(folder: str | Path, n: int, seed: int = 0, base_url: str = "http://127.0.0.1:8765",
                broken: int = 0, image_px: int = 64) -> Path:
    """Write n good rows (+ broken rows) and their images; returns the manifest path."""
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    base_url = base_url.rstrip("/")
    good = shapes.samples(n, seed)
    rows = []
    for i, s in enumerate(good):
        name = f"{i:06d}.{'png' if i % 2 else 'jpg'}"
        shapes.render(s, image_px).save(images / name, quality=95)
        rows.append(_row(f"s{seed}-{i:06d}", f"{base_url}/images/{name}", s))
    for k in range(broken):
        rows.extend(_broken_rows(images, base_url, good, rows, k, seed, image_px))
    manifest = folder / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return manifest


def _broken_rows(images: Path, base_url: str, good: list, rows: list, k: int, seed: int, px: int) -> list[dict]:
    src = good[k % len(good)]
    (images / f"corrupt-{k}.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg " * 8)
    shapes.render(src, 8).save(images / f"tiny-{k}.png")
    (images / f"dup-{k}.jpg").write_bytes((images / Path(rows[k]["url"]).name).read_bytes())
    other = shapes.Sample(src.combo, src.template, src.seed + 1)
    shapes.render(other, px).save(images / f"dupcap-{k}.png")
    english = shapes.Sample(src.combo, src.template, src.seed)
    return [
        _row(f"x{seed}-missing-{k}", f"{base_url}/images/missing-{k}.jpg", src, "missing"),
        _row(f"x{seed}-corrupt-{k}", f"{base_url}/images/corrupt-{k}.jpg", src, "corrupt"),
        _row(f"x{seed}-tiny-{k}", f"{base_url}/images/tiny-{k}.png", src, "tiny"),
        _row(f"x{seed}-slow-{k}", f"{base_url}/slow/images/{Path(rows[k]['url']).name}", src, "slow"),
        {**_row(f"x{seed}-empty_zh-{k}", rows[k]["url"], src, "empty_zh"), "caption_zh": "  "},
        {**_row(f"x{seed}-english_in_zh-{k}", rows[k]["url"], src, "english_in_zh"),
         "caption_zh": english.caption_en},
        {**rows[k], "key": f"x{seed}-dup_image-{k}", "url": f"{base_url}/images/dup-{k}.jpg", "broken": "dup_image"},
        {**rows[k], "key": f"x{seed}-boilerplate-{k}", "url": f"{base_url}/images/dupcap-{k}.png",
         "caption_zh": "点击查看大图", "broken": "boilerplate"},
    ]


class _Handler(http.server.SimpleHTTPRequestHandler):
    sent: dict[str, int] = {}  # /trickle/ path -> bytes sent before the client went away or all were sent

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.startswith("/trickle/"):  # translate_path keeps it inside the served folder
            return self._trickle(Path(self.translate_path(self.path[len("/trickle"):])))
        if self.path.startswith("/slow/"):
            time.sleep(SLOW_SECONDS)
            self.path = self.path[len("/slow"):]
        try:
            return super().do_GET()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            return None

    def _trickle(self, file: Path) -> None:
        if not file.is_file():
            return self.send_error(404)
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        _Handler.sent[self.path] = 0
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                _Handler.sent[self.path] = i + 1
                time.sleep(TRICKLE_SECONDS_PER_BYTE)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):  # quiet
        pass


def serve(folder: str | Path, port: int = 8765, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """Start serving folder on host:port in a daemon thread; returns the server (call .shutdown())."""
    handler = functools.partial(_Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
